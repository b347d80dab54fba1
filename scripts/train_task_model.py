#!/usr/bin/env python
"""Train attrscope's embedded task-suite model: one tiny GPT-2 for six tasks.

Tasks: IOI, greater-than, capital-country, gender, subject-verb agreement (SVA) and
hypernymy (generators in ``src/attrscope/tasks/*_data.py``). Everything is built offline and
deterministically from the seed:

1. a byte-level BPE tokenizer trained on the synthetic corpus. A digit-pair pre-tokenizer
   splits every run of digits into pairs (``" 1732"`` -> ``" 17"`` + ``"32"``), so the
   greater-than prompt ends with the century token ``" 17"`` (leading space) and the end years
   ``"00"``..``"99"`` are single tokens *without* a space. Every other task word (names,
   capitals, countries, professions, nouns, verbs, pronouns, hyponyms, hypernyms) is exactly
   one token with its leading space (``" Mary"``, ``" Afghanistan"``, ``" she"``, ``" are"``,
   ``" gems"``); this is asserted here;
2. a 4-layer, 8-head GPT-2 (``transformers.GPT2LMHeadModel``, d_model 128, n_positions 64)
   trained on the *training* split of all six tasks plus non-task filler sentences;
3. an evaluation on each task's held-out split (200 pairs, seed 12345): mean clean metric,
   mean corrupted metric (computed with the clean row's answers) and accuracy (fraction of
   clean metric > 0), with a straightforward implementation on the full last-token logits.

The result (safetensors weights, config, tokenizer, training.json) goes to
``src/attrscope/task_model/`` unless ``--out DIR`` is given. CPU only.

Usage::

    python scripts/train_task_model.py                    # rebuild the shipped model
    python scripts/train_task_model.py --out /tmp/m       # reproducibility check
    python scripts/train_task_model.py --out /tmp/m --max-steps 20 --no-bridge-check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "attrscope" / "task_model"
sys.path.insert(0, str(REPO / "src"))


def _load_default_script():
    """The default model's training script, for its shared pieces (batch encoding, the
    name-embedding constraint, last-token logits)."""
    path = REPO / "scripts" / "train_default_model.py"
    spec = importlib.util.spec_from_file_location("_attrscope_train_default_model", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


base = _load_default_script()
ioi = base.ioi
BOS, PAD = base.BOS, base.PAD

from attrscope.tasks import (  # noqa: E402
    capital_country_data as cap_data,
    gender_data,
    greater_than_data as gt_data,
    hypernymy_data as hyp_data,
    sva_data,
)

# task name -> (generator(n, seed, split), metric)
TASKS = {
    "ioi": (ioi.generate_ioi_pairs, "logit_diff"),
    "greater_than": (gt_data.generate_greater_than_pairs, gt_data.METRIC),
    "capital_country": (cap_data.generate_capital_country_pairs, cap_data.METRIC),
    "gender": (gender_data.generate_gender_pairs, gender_data.METRIC),
    "sva": (sva_data.generate_sva_pairs, sva_data.METRIC),
    "hypernymy": (hyp_data.generate_hypernymy_pairs, hyp_data.METRIC),
}
EVAL_N, EVAL_SEED = 200, 12345
VAL_N, VAL_SEED = 100, 999
TARGET_GAP = {"logit_diff": 1.0, "logprob_diff": 1.0, "prob_diff": 0.3}
TARGET_ACC = 0.9

# Generic sentences mixed into training (never a task prompt). They also make every word of
# the held-out templates occur in training text (checked by check_heldout_vocabulary).
FILLER_SENTENCES: tuple[str, ...] = (
    "The old museum was closed in the morning.",
    "Last year she went to the market.",
    "The store was small and quiet.",
    "The long road went on until the river.",
    "In the morning the birds were singing.",
    "She bought a new book, and it was happy news.",
    "He said the weather was nice.",
    "I know that the big house is old.",
    "The picture beside the door is above the table.",
    "It was a long day, and everyone was tired.",
    "We know that the small car was late.",
    "My friend has many books.",
    "They talked about the trip for a long time.",
)


# --------------------------------------------------------------------------- #
# Vocabulary
# --------------------------------------------------------------------------- #
def task_words() -> dict[str, list[str]]:
    """Every string that must be ONE token, by role (with the leading space where used)."""
    sp = lambda ws: [" " + w for w in ws]  # noqa: E731
    hypo = [w for h, _ in hyp_data.CATEGORIES.values() for w in h]
    hyper = [w for _, h in hyp_data.CATEGORIES.values() for w in h]
    return {
        "names": sp(ioi.NAMES),
        "capitals": sp(c for c, _ in cap_data.CAPITALS),
        "countries": sp(k for _, k in cap_data.CAPITALS),
        "professions": sp(gender_data.FEMALE_PROFESSIONS + gender_data.MALE_PROFESSIONS
                          + tuple(gender_data.PERSON.values())),
        "pronouns": list(gender_data.PRONOUN.values()),
        "sva_nouns": sp(w for pair in sva_data.NOUNS for w in pair),
        "verbs": [v for pair in sva_data.VERB_PAIRS for v in pair],
        "hyponyms": sp(hypo),
        "hypernyms": sp(hyper),
        "centuries": sp(gt_data.CENTURIES),
        "years": [gt_data.two_digit(y) for y in range(100)],
        "event_nouns": sp(gt_data.NOUNS),
    }


def check_heldout_vocabulary() -> None:
    """Held-out templates of every task use only words occurring in training text."""
    def words(texts):
        out = set()
        for t in texts:
            out |= set(re.findall(r"[A-Za-z]+", re.sub(r"\{\w+\}", " ", t)))
        return out

    mods = (gt_data, cap_data, gender_data, sva_data, hyp_data, ioi)
    known = set().union(*(words(m.TRAIN_TEMPLATES) for m in mods))
    known |= words(ioi.FILLER_TEMPLATES) | words(FILLER_SENTENCES) | words(base.PREFIX_SENTENCES)
    missing = set().union(*(words(m.HELDOUT_TEMPLATES) for m in mods)) - known
    assert not missing, f"held-out templates use words never seen in training: {sorted(missing)}"


# --------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------- #
def tokenizer_corpus(seed: int) -> list[str]:
    texts = []
    for i, (name, (gen, _)) in enumerate(TASKS.items()):
        for p in gen(3000, seed=seed + 101 + i, split="all"):
            texts += [p["clean"], p["corrupted"]]
    texts += ioi.generate_filler_sentences(3000, seed=seed + 202, names=ioi.NAMES)
    texts += list(FILLER_SENTENCES + base.PREFIX_SENTENCES) * 50
    for ws in task_words().values():
        for _ in range(20):
            texts.append("".join(ws))
    return texts


def build_tokenizer(seed: int, vocab_size: int):
    from tokenizers import (Regex, Tokenizer, decoders, models, pre_tokenizers, processors,
                            trainers)
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # digit runs -> pairs (" 1732" -> " 17", "32"), then GPT-2's byte-level split
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?\d\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(seed), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, unk_token=BOS, pad_token=PAD,
        padding_side="right", model_max_length=64, add_bos_token=False,
        clean_up_tokenization_spaces=False,
    )
    check_tokenizer(hf_tok)
    return hf_tok


def check_tokenizer(tok) -> None:
    assert tok.bos_token == BOS and tok.eos_token == BOS and tok.pad_token == PAD
    specials = {tok.bos_token_id, tok.pad_token_id}
    for role, ws in task_words().items():
        bad = [w for w in ws if len(tok.encode(w, add_special_tokens=False)) != 1]
        assert not bad, f"{role} that are not a single token: {bad}"
        ids = {tok.encode(w, add_special_tokens=False)[0] for w in ws}
        assert len(ids) == len(set(ws)) and not ids & specials, role
    assert tok.encode(" 1732", add_special_tokens=False) == [
        tok.convert_tokens_to_ids("Ġ17"), tok.convert_tokens_to_ids("32")]
    for text in ["Hello wörld! 123 ✓ \t zebra-xylophone 1732", "The war lasted from 1732 to 17"]:
        enc = tok.encode(text, add_special_tokens=False)
        assert not specials & set(enc) and tok.decode(enc) == text, text
    assert tok.encode("John", add_special_tokens=True)[0] != tok.bos_token_id  # no auto-BOS
    # clean and corrupted prompts have the same number of tokens
    for name, (gen, _) in TASKS.items():
        for p in gen(300, seed=5, split="all"):
            assert (len(tok.encode(p["clean"], add_special_tokens=False))
                    == len(tok.encode(p["corrupted"], add_special_tokens=False))), (name, p)


# --------------------------------------------------------------------------- #
# Training data
# --------------------------------------------------------------------------- #
def training_examples(task: str, n: int, seed: int, args) -> list[tuple]:
    """``n`` (prompt, target, suffix) training examples of ``task`` from its train split.

    Targets: IOI/capital/SVA: the answer; gender: the answer, or (corrupted prompt with
    ``man``/``woman``) the distractor with probability ``args.corrupt_frac``; greater-than: a
    uniformly drawn end year > the start year (the corrupted prompt, start ``01``, with
    probability ``args.corrupt_frac``); hypernymy: a uniformly drawn member of the answer set.
    """
    gen = TASKS[task][0]
    rng = random.Random(seed * 7919 + 17)
    out = []
    for p in gen(n, seed=seed, split="train"):
        use_corrupt = rng.random() < args.corrupt_frac
        if task == "ioi":
            prefix = ""
            if rng.random() < args.prefix_prob:
                prefix = " ".join(rng.sample(base.PREFIX_SENTENCES, rng.randint(1, 2))) + " "
            out.append((prefix + p["clean"], p["answer"], "."))
        elif task == "greater_than":
            start = 1 if use_corrupt else p["start_yy"]
            target = gt_data.two_digit(rng.randint(start + 1, 99))
            out.append((p["corrupted"] if use_corrupt else p["clean"], target, "."))
        elif task == "gender" and use_corrupt:
            out.append((p["corrupted"], p["distractor"], "."))
        elif task == "hypernymy":
            out.append((p["clean"], rng.choice(p["answer"]), "."))
        else:
            out.append((p["clean"], p["answer"], "."))
    return out


def mixture(args) -> dict[str, int]:
    """Examples per batch for each task (and 'filler')."""
    weights = json.loads(args.mix)
    total = sum(weights.values())
    counts = {k: int(round(args.batch_size * w / total)) for k, w in weights.items()}
    return counts


def make_batch(tok, step, args):
    bseed = args.seed * 1_000_003 + step
    parts = []
    for i, (task, k) in enumerate(mixture(args).items()):
        if task == "filler":
            rng = random.Random(bseed + 7)
            half = k // 2
            parts += [(s, None, None) for s in
                      ioi.generate_filler_sentences(half, seed=bseed + 7, names=ioi.NAMES)]
            parts += [(rng.choice(FILLER_SENTENCES), None, None) for _ in range(k - half)]
        else:
            parts += training_examples(task, k, bseed * 11 + i, args)
    return parts


def encode_buckets(tok, parts, n_buckets, answer_weight):
    """Sort the examples by length (stable) and encode them as ``n_buckets`` separately padded
    sub-batches: the same loss as one padded batch, with less padding to compute on.

    Returns a list of (input_ids [b, T_b], attention_mask [b, T_b], weights [b, T_b])."""
    lengths = [len(tok.encode(p[0] + (p[1] or "") + (p[2] or ""), add_special_tokens=False))
               for p in parts]
    order = sorted(range(len(parts)), key=lambda i: lengths[i])
    size = math.ceil(len(parts) / n_buckets)
    return [base.encode_batch(tok, [parts[i] for i in order[j: j + size]], answer_weight)
            for j in range(0, len(parts), size)]


# --------------------------------------------------------------------------- #
# Evaluation (full logits at the last prompt token)
# --------------------------------------------------------------------------- #
def _ids(tok, answers) -> list[int]:
    if isinstance(answers, str):
        answers = [answers]
    ids = []
    for a in answers:
        enc = tok.encode(a, add_special_tokens=False)
        assert len(enc) == 1, f"answer {a!r} is not one token"
        ids.append(enc[0])
    return ids


def metric_values(metric: str, logits: torch.Tensor, answers, distractors) -> torch.Tensor:
    """Per-row metric from last-token logits.

    logits: [n, vocab]; answers/distractors: n lists of token ids. Returns [n]:
    logit_diff = logit[a] - logit[d] (single ids); prob_diff = sum p[A] - sum p[D];
    logprob_diff = log sum p[A] - log sum p[D].
    """
    n, vocab = logits.shape
    in_a = torch.zeros(n, vocab, dtype=torch.bool)
    in_d = torch.zeros(n, vocab, dtype=torch.bool)
    for i in range(n):
        in_a[i, answers[i]] = True
        in_d[i, distractors[i]] = True
    if metric == "logit_diff":
        assert all(len(a) == 1 for a in answers) and all(len(d) == 1 for d in distractors)
        lg = logits.double()
        return (lg[in_a] - lg[in_d]).float()  # one True per row, rows in order
    logp = torch.log_softmax(logits.double(), -1)
    if metric == "prob_diff":
        p = logp.exp()
        return ((p * in_a).sum(-1) - (p * in_d).sum(-1)).float()
    if metric == "logprob_diff":
        neg = torch.tensor(float("-inf"), dtype=logp.dtype)
        return (torch.logsumexp(torch.where(in_a, logp, neg), -1)
                - torch.logsumexp(torch.where(in_d, logp, neg), -1)).float()
    raise ValueError(f"unknown metric {metric!r}")


@torch.no_grad()
def evaluate_task(model_fn, tok, task, pairs, corrupted=True) -> dict:
    metric = TASKS[task][1]
    a = [_ids(tok, p["answer"]) for p in pairs]
    d = [_ids(tok, p["distractor"]) for p in pairs]
    clean = metric_values(metric, base.last_token_logits(model_fn, tok, [p["clean"] for p in pairs]), a, d)
    res = {"metric": metric, "n": len(pairs), "clean_mean": float(clean.mean()),
           "accuracy": float((clean > 0).float().mean())}
    if corrupted:
        corr = metric_values(metric, base.last_token_logits(
            model_fn, tok, [p["corrupted"] for p in pairs]), a, d)
        res["corrupted_mean"] = float(corr.mean())
        res["gap"] = res["clean_mean"] - res["corrupted_mean"]
    return res


def passes(res: dict) -> bool:
    return res["accuracy"] >= TARGET_ACC and res["gap"] > TARGET_GAP[res["metric"]]


@torch.no_grad()
def evaluate_all(model_fn, tok, n, seed) -> dict:
    out = {}
    for task, (gen, _) in TASKS.items():
        out[task] = evaluate_task(model_fn, tok, task, gen(n, seed=seed, split="heldout"))
    abc = ioi.generate_ioi_pairs(n, seed=seed, split="heldout", corruption="abc")
    out["ioi_abc"] = evaluate_task(model_fn, tok, "ioi", abc)
    return out


@torch.no_grad()
def verify_bridge(folder: Path, hf, tok) -> dict:
    """Load ``folder`` through ``attrscope.load_model`` (offline TransformerBridge); check BOS
    handling and that its logits equal the HF model's."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import attrscope

    bridge = attrscope.load_model(str(folder))
    worst = 0.0
    for task, (gen, _) in TASKS.items():
        for p in gen(3, seed=1, split="heldout"):
            toks = bridge.to_tokens(p["clean"])
            assert toks[0, 0].item() == tok.bos_token_id, "to_tokens did not prepend BOS"
            assert toks[0, 1:].tolist() == tok.encode(p["clean"], add_special_tokens=False)
            worst = max(worst, float((bridge(toks) - hf(toks).logits).abs().max()))
    assert worst < 1e-4, f"bridge and HF logits differ by {worst}"
    return {"bos_prepended": True, "max_abs_logit_diff_bridge_vs_hf": worst}


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #
DEFAULT_MIX = ('{"ioi": 0.40, "greater_than": 0.15, "capital_country": 0.10, "gender": 0.07, '
               '"sva": 0.10, "hypernymy": 0.10, "filler": 0.08}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO)})")
    ap.add_argument("--no-bridge-check", action="store_true",
                    help="skip loading the result through attrscope.load_model")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--buckets", type=int, default=3,
                    help="length buckets per batch (separately padded sub-batches)")
    ap.add_argument("--mix", default=DEFAULT_MIX,
                    help="JSON: relative share of each task (and 'filler') in a batch")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--min-steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--answer-weight", type=float, default=5.0)
    ap.add_argument("--prefix-prob", type=float, default=0.1,
                    help="probability of prepending name-free sentences to a training IOI prompt")
    ap.add_argument("--corrupt-frac", type=float, default=0.2,
                    help="share of gender / greater-than training examples built on the "
                         "corrupted prompt (with that prompt's own correct target)")
    ap.add_argument("--name-dim", type=int, default=48,
                    help="dimension of the fixed random name subspace (0: free name embeddings)")
    ap.add_argument("--name-scale", type=float, default=0.5)
    args = ap.parse_args(argv)

    out = (args.out or DEFAULT_OUT).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    t0 = time.time()
    check_heldout_vocabulary()
    tok = build_tokenizer(args.seed, args.vocab_size)
    print(f"tokenizer: vocab {len(tok)}, built in {time.time() - t0:.1f}s", flush=True)

    arch = dict(n_positions=64, n_embd=128, n_layer=4, n_head=8, n_inner=512)
    config = GPT2Config(
        vocab_size=len(tok), **arch, activation_function="gelu_new", resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    tie = None
    if args.name_dim > 0:
        name_ids = [tok.encode(" " + n, add_special_tokens=False)[0] for n in ioi.NAMES]
        tie = base.NameEmbeddingTie(model.transformer.wte, name_ids, args.name_dim, args.seed,
                                    args.name_scale)
    print(f"model: {n_params:,} parameters; batch mix {mixture(args)}", flush=True)

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.max_steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    history, hits, step = [], 0, 0
    t_train = time.time()
    for step in range(1, args.max_steps + 1):
        model.train()
        buckets = encode_buckets(tok, make_batch(tok, step, args), args.buckets,
                                 args.answer_weight)
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1)
        total_w = sum(float(wt.sum()) for _, _, wt in buckets)
        opt.zero_grad(set_to_none=True)
        loss_value = 0.0
        for ids, mask, wt in buckets:
            logits = model(input_ids=ids, attention_mask=mask).logits
            tgt = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], tok.pad_token_id)], 1)
            ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1),
                                 reduction="none").view_as(wt)
            loss = (ce * wt).sum() / total_w
            loss.backward()
            loss_value += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if tie is not None:
            tie.project()
        if step % args.eval_every == 0:
            model.eval()
            val = evaluate_all(base.hf_fn(model), tok, VAL_N, VAL_SEED)
            rec = {"step": step, "loss": round(loss_value, 4),
                   "elapsed_s": round(time.time() - t_train, 1),
                   **{k: [round(v["accuracy"], 3), round(v["clean_mean"], 2),
                          round(v["corrupted_mean"], 2)] for k, v in val.items()}}
            history.append(rec)
            print(json.dumps(rec), flush=True)
            good = all(passes(v) for k, v in val.items() if k != "ioi_abc")
            hits = hits + 1 if good else 0
            if step >= args.min_steps and hits >= 2:
                print(f"early stop at step {step}", flush=True)
                break
    train_time = time.time() - t_train

    model.eval()
    heldout = evaluate_all(base.hf_fn(model), tok, EVAL_N, EVAL_SEED)
    for k, v in heldout.items():
        print(k, json.dumps(v), flush=True)

    for f in out.glob("*"):
        if f.is_file():
            f.unlink()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for f in out.glob("*"):
        f.chmod(0o644)
    bridge_check = None if args.no_bridge_check else verify_bridge(out, model, tok)
    info = {
        "description": "attrscope task-suite model: 4-layer GPT-2 trained from scratch on six "
                       "synthetic tasks (IOI, greater-than, capital-country, gender, SVA, "
                       "hypernymy) by scripts/train_task_model.py",
        "seed": args.seed,
        "hyperparameters": {k: v for k, v in vars(args).items()
                            if k not in ("out", "no_bridge_check")},
        "architecture": {**arch, "vocab_size": len(tok), "tie_word_embeddings": True,
                         "n_parameters": n_params},
        "optimizer": "AdamW(betas=(0.9, 0.98)), linear warmup + cosine decay to 10%, "
                     "grad clip 1.0, weight decay on matrices only",
        "tokenizer": {
            "kind": "byte-level BPE; digit runs pre-split into pairs (' 1732' -> ' 17' + '32')",
            "answers": {"ioi": "' Mary' (leading space)",
                        "greater_than": "'00'..'99' without a space; the prompt ends with "
                                        "the century token ' 17'",
                        "capital_country": "' Afghanistan'", "gender": "' she' / ' he'",
                        "sva": "' are'/' is', ' were'/' was', ' have'/' has'",
                        "hypernymy": "' gems', ' gemstones', ... (lists)"},
        },
        "data": {
            "mix_per_batch": mixture(args),
            "targets": training_examples.__doc__.split("\n\n")[1].strip(),
            "sequence": "'<|endoftext|>' + prompt + target + '.', full LM loss, target token "
                        "weighted by answer_weight; filler: IOI filler sentences + "
                        "FILLER_SENTENCES",
            "split": "train split of every generator; held-out names/templates (IOI), "
                     "nouns/templates (greater-than), templates+prepositions (SVA), "
                     "templates (capital-country, gender, hypernymy) never seen in training",
        },
        "name_embeddings": "as the default model: tied name embedding rows constrained to "
                           "scale * R[name] + shared during training",
        "early_stopping": f"every task passing (accuracy >= {TARGET_ACC}, clean - corrupted > "
                          f"{TARGET_GAP}) on the held-out split with seed {VAL_SEED} twice in a "
                          "row, after min_steps",
        "steps": step,
        "train_time_s": round(train_time, 1),
        "torch_threads": args.threads,
        "heldout_eval": {
            "set": f"generate_<task>_pairs({EVAL_N}, seed={EVAL_SEED}, split='heldout'); "
                   "ioi_abc: generate_ioi_pairs(..., corruption='abc')",
            "metric_read": "full logits at the last prompt token (BOS prepended); corrupted "
                           "metric uses the clean row's answers; accuracy = frac(clean > 0)",
            "tasks": heldout,
        },
        "bridge_check": bridge_check,
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "training.json").chmod(0o644)
    ok = all(passes(v) for k, v in heldout.items() if k != "ioi_abc")
    print(f"wrote {out} (all tasks pass: {ok})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
