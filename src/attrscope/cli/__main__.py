"""``python -m attrscope.cli``."""

from . import main

main()
