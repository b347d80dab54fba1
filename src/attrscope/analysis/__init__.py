"""Analyses that read :class:`attrscope.scores.Scores`: agreement between methods, direction
asymmetry and latent components, verification by ablation, and the comparison report."""
