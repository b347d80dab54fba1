#!/usr/bin/env python
"""Train attrscope's embedded default model: a tiny GPT-2 that solves IOI.

Everything is built offline and deterministically from the seed:

1. a byte-level BPE tokenizer (GPT-2 style) trained on the synthetic corpus, in
   which every name with a leading space (" John") is exactly one token;
2. a 4-layer, 8-head GPT-2 (``transformers.GPT2LMHeadModel``) trained on IOI
   prompts built from the *training* names and templates (plus non-IOI filler
   sentences that mention every name, so held-out names get trained embeddings);
3. an evaluation on held-out names and held-out templates
   (``generate_ioi_pairs(500, seed=12345, split="heldout")``).

The result (safetensors weights, config, tokenizer, training.json) goes to
``src/attrscope/default_model/`` unless ``--out DIR`` is given.

Usage::

    python scripts/train_default_model.py                  # rebuild shipped model
    python scripts/train_default_model.py --out /tmp/m     # reproducibility check
    python scripts/train_default_model.py --check          # same, into a temp dir,
                                                           # then compare with shipped
    python scripts/train_default_model.py --verify src/attrscope/default_model
                                                           # only check loading (HF +
                                                           # TransformerBridge) and metrics
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "attrscope" / "default_model"
BOS = "<|endoftext|>"
PAD = "<|pad|>"

# Name-free sentences optionally prepended to training IOI prompts, so that the
# names occur at many different positions (augmentation; training only).
PREFIX_SENTENCES = (
    "It was a sunny day.",
    "The weather was nice.",
    "Everyone was happy that day.",
    "It was a long and busy week.",
    "The sun was out and the birds were singing.",
    "Nobody expected what happened next.",
    "This is a short story.",
    "It rained all morning.",
    "The town was small and quiet.",
    "It was the first day of the summer.",
)


def _load_ioi_data():
    """Import attrscope.tasks.ioi_data; fall back to loading the file directly."""
    try:
        sys.path.insert(0, str(REPO / "src"))
        from attrscope.tasks import ioi_data  # type: ignore

        return ioi_data
    except Exception:  # package __init__ broken / heavy: load the module alone
        path = REPO / "src" / "attrscope" / "tasks" / "ioi_data.py"
        spec = importlib.util.spec_from_file_location("_attrscope_ioi_data", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod


ioi = _load_ioi_data()


# --------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------- #
def tokenizer_corpus(seed: int) -> list[str]:
    """Text the BPE is trained on: training IOI sentences + filler (all names)."""
    texts = []
    for p in ioi.generate_ioi_pairs(20000, seed=seed + 101, split="train"):
        texts.append(p["clean"] + p["answer"] + ".")
    texts += ioi.generate_filler_sentences(20000, seed=seed + 202, names=ioi.NAMES)
    texts += list(PREFIX_SENTENCES) * 200
    # every name / place / object many times, always with a leading space
    for _ in range(20):
        texts.append(" " + " ".join(ioi.NAMES))
        texts.append(" " + " ".join(ioi.PLACES))
        texts.append(" " + " ".join(ioi.OBJECTS))
    return texts


def build_tokenizer(seed: int, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(seed), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        unk_token=BOS,
        pad_token=PAD,
        padding_side="right",
        model_max_length=64,
        add_bos_token=False,
        clean_up_tokenization_spaces=False,
    )
    check_tokenizer(hf_tok)
    return hf_tok


def check_tokenizer(tok) -> None:
    assert tok.bos_token == BOS and tok.eos_token == BOS and tok.pad_token == PAD
    assert tok.pad_token_id != tok.bos_token_id
    bad = [n for n in ioi.NAMES if len(tok.encode(" " + n, add_special_tokens=False)) != 1]
    assert not bad, f"names that are not a single token: {bad}"
    ids = {tok.encode(" " + n, add_special_tokens=False)[0] for n in ioi.NAMES}
    assert len(ids) == len(ioi.NAMES)
    specials = {tok.bos_token_id, tok.pad_token_id}
    for word in list(ioi.PLACES) + list(ioi.OBJECTS):
        enc = tok.encode(" " + word, add_special_tokens=False)
        assert enc and not specials & set(enc), word
        assert tok.decode(enc) == " " + word, word
    # arbitrary text still round-trips (byte level)
    for text in ["Hello wörld! 123 ✓ \t zebra-xylophone", "When John and Mary went to the store"]:
        enc = tok.encode(text, add_special_tokens=False)
        assert not specials & set(enc) and tok.decode(enc) == text, text
    assert tok.encode("John", add_special_tokens=True)[0] != tok.bos_token_id  # no auto-BOS


def check_heldout_vocabulary() -> None:
    """Held-out templates use only words that the training text contains."""
    def words(texts):
        out = set()
        for t in texts:
            t = re.sub(r"\{\w+\}", " ", t)
            out |= set(re.findall(r"[A-Za-z]+", t))
        return out

    known = words(ioi.TRAIN_TEMPLATES) | words(ioi.FILLER_TEMPLATES)
    missing = words(ioi.HELDOUT_TEMPLATES) - known
    assert not missing, f"held-out templates use words never seen in training: {missing}"


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #
def encode_batch(tok, texts_parts, answer_weight):
    """texts_parts: list of (prefix, answer_or_None, suffix).

    Returns input_ids, attention_mask, labels (-100 at pads) and per-token loss
    weights (answer_weight on the token predicting the answer).
    """
    seqs, weights = [], []
    for prefix, answer, suffix in texts_parts:
        ids = [tok.bos_token_id] + tok.encode(prefix, add_special_tokens=False)
        w = [1.0] * len(ids)  # w[i] weights the prediction made at position i
        if answer is not None:
            a = tok.encode(answer, add_special_tokens=False)
            assert len(a) == 1
            w[-1] = answer_weight
            ids += a
            w += [1.0]
        if suffix:
            s = tok.encode(suffix, add_special_tokens=False)
            ids += s
            w += [1.0] * len(s)
        w[-1] = 0.0  # last token predicts nothing
        seqs.append(ids)
        weights.append(w)
    T = max(map(len, seqs))
    assert T <= 64
    B = len(seqs)
    input_ids = torch.full((B, T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    wt = torch.zeros((B, T))
    for i, (ids, w) in enumerate(zip(seqs, weights)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        wt[i, : len(w)] = torch.tensor(w)
    return input_ids, mask, wt


def make_batch(tok, step, seed, batch_size, filler_frac, answer_weight, prefix_prob,
               insert_prob):
    n_fill = int(round(batch_size * filler_frac))
    n_ioi = batch_size - n_fill
    bseed = seed * 1_000_003 + step
    rng = random.Random(bseed + 13)
    parts = []
    for p in ioi.generate_ioi_pairs(n_ioi, seed=bseed, split="train"):
        prefix = ""
        if rng.random() < prefix_prob:
            prefix = " ".join(rng.sample(PREFIX_SENTENCES, rng.randint(1, 2))) + " "
        text = p["clean"]
        bounds = [i for i in range(len(text)) if text.startswith(". ", i)]
        if bounds and rng.random() < insert_prob:
            i = rng.choice(bounds) + 2
            text = text[:i] + rng.choice(PREFIX_SENTENCES) + " " + text[i:]
        parts.append((prefix + text, p["answer"], "."))
    parts += [(s, None, None)
              for s in ioi.generate_filler_sentences(n_fill, seed=bseed + 7, names=ioi.NAMES)]
    return encode_batch(tok, parts, answer_weight)


# --------------------------------------------------------------------------- #
# Shared name embeddings
# --------------------------------------------------------------------------- #
class NameEmbeddingTie:
    """Constrain every name's (tied) embedding to ``scale * R[name] + shared``.

    ``R`` holds fixed random, centred vectors in a random ``dim``-dimensional
    subspace of the residual stream; ``scale`` and the ``shared`` vector are
    learned (by projecting the name rows onto this family after every optimiser
    step). Held-out names are thus statistically identical to training names,
    so the IOI circuit learned on training names generalises to them. The saved
    model is an ordinary GPT-2 (the constraint only shapes its embedding rows).
    """

    def __init__(self, wte: torch.nn.Embedding, name_ids, dim: int, seed: int, init_scale: float):
        g = torch.Generator().manual_seed(seed + 31337)
        D = wte.weight.shape[1]
        q, _ = torch.linalg.qr(torch.randn(D, dim, generator=g))
        r = torch.randn(len(name_ids), dim, generator=g) @ q.T
        r = r - r.mean(0, keepdim=True)
        r = r / r.norm(dim=1, keepdim=True)
        self.wte, self.ids, self.R = wte, torch.tensor(name_ids), r
        with torch.no_grad():
            shared = wte.weight[self.ids].mean(0)
            wte.weight[self.ids] = init_scale * r + shared

    @torch.no_grad()
    def project(self) -> float:
        rows = self.wte.weight[self.ids]
        shared = rows.mean(0)
        scale = ((rows - shared) * self.R).sum() / (self.R * self.R).sum()
        self.wte.weight[self.ids] = scale * self.R + shared
        return float(scale)


# --------------------------------------------------------------------------- #
# Evaluation
# --------------------------------------------------------------------------- #
def last_token_logits(model_fn, tok, prompts, batch_size=128):
    """Logits at each prompt's own last real token (BOS prepended, right padded)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i: i + batch_size]
        seqs = [[tok.bos_token_id] + tok.encode(p, add_special_tokens=False) for p in chunk]
        T = max(map(len, seqs))
        ids = torch.full((len(seqs), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, s in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        logits = model_fn(ids, mask)
        last = mask.sum(1) - 1
        out.append(logits[torch.arange(len(seqs)), last])
    return torch.cat(out)


@torch.no_grad()
def evaluate(model_fn, tok, pairs, keys=("clean", "corrupted")):
    a = torch.tensor([tok.encode(p["answer"], add_special_tokens=False)[0] for p in pairs])
    d = torch.tensor([tok.encode(p["distractor"], add_special_tokens=False)[0] for p in pairs])
    idx = torch.arange(len(pairs))
    res = {}
    for key in keys:
        lg = last_token_logits(model_fn, tok, [p[key] for p in pairs]).float()
        diff = lg[idx, a] - lg[idx, d]
        res[f"{key}_accuracy"] = float((diff > 0).float().mean())
        res[f"{key}_mean_logit_diff"] = float(diff.mean())
        res[f"{key}_min_logit_diff"] = float(diff.min())
        if key == "clean":
            top = lg.argmax(-1)
            res["clean_top1_is_answer"] = float((top == a).float().mean())
    res["n"] = len(pairs)
    return res


def hf_fn(model):
    def fn(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits
    return fn


@torch.no_grad()
def verify_bridge(folder: Path) -> dict:
    """Load ``folder`` offline via HF and TransformerLens' TransformerBridge and check
    BOS handling, logits equality and the held-out metrics through the bridge."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformer_lens import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    check_tokenizer(tok)
    assert tok.padding_side == "right"
    bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf, tokenizer=tok)
    text = "When John and Mary went to the store, John gave a bottle of milk to"
    toks = bridge.to_tokens(text)
    assert toks[0, 0].item() == tok.bos_token_id, "to_tokens did not prepend BOS"
    assert toks[0, 1:].tolist() == tok.encode(text, add_special_tokens=False)
    max_abs = float((bridge(toks) - hf(toks).logits).abs().max())
    assert max_abs < 1e-4, f"bridge and HF logits differ by {max_abs}"
    pairs = ioi.generate_ioi_pairs(500, seed=12345, split="heldout")
    res_b = evaluate(lambda ids, mask: bridge(ids, attention_mask=mask), tok, pairs)
    res_h = evaluate(hf_fn(hf), tok, pairs)
    assert abs(res_b["clean_mean_logit_diff"] - res_h["clean_mean_logit_diff"]) < 1e-3
    assert res_b["clean_accuracy"] == res_h["clean_accuracy"]
    return {"bos_prepended": True, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "max_abs_logit_diff_bridge_vs_hf": max_abs,
            "heldout_accuracy": res_b["clean_accuracy"],
            "heldout_mean_logit_diff": res_b["clean_mean_logit_diff"],
            "heldout_corrupted_mean_logit_diff": res_b["corrupted_mean_logit_diff"]}


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #
def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None,
                    help=f"output folder (default: {DEFAULT_OUT.relative_to(REPO)})")
    ap.add_argument("--check", action="store_true",
                    help="train into a temp dir and compare with the shipped model")
    ap.add_argument("--verify", type=Path, default=None, metavar="DIR",
                    help="only verify an existing model folder (HF + TransformerBridge) and exit")
    ap.add_argument("--no-bridge-check", action="store_true",
                    help="skip the TransformerBridge verification after training")
    ap.add_argument("--no-quality-gate", action="store_true",
                    help="exit 0 even below the held-out quality requirement (short test runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--min-steps", type=int, default=800)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--filler-frac", type=float, default=0.25)
    ap.add_argument("--answer-weight", type=float, default=5.0)
    ap.add_argument("--prefix-prob", type=float, default=0.3,
                    help="probability of prepending name-free sentences to a training IOI prompt")
    ap.add_argument("--insert-prob", type=float, default=0.2,
                    help="probability of inserting a name-free sentence at a sentence boundary")
    ap.add_argument("--name-dim", type=int, default=48,
                    help="dimension of the fixed random name subspace (0: free name embeddings)")
    ap.add_argument("--name-scale", type=float, default=0.5)
    ap.add_argument("--target-acc", type=float, default=0.995,
                    help="early stop once validation accuracy >= this ...")
    ap.add_argument("--target-logit-diff", type=float, default=6.0,
                    help="... and validation mean logit diff >= this")
    args = ap.parse_args(argv)

    if args.verify is not None:
        torch.set_num_threads(args.threads)
        print(json.dumps(verify_bridge(args.verify.resolve()), indent=2))
        return 0

    if args.check and args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="attrscope_default_model_"))
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

    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=128,
        n_layer=4,
        n_head=8,
        n_inner=512,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    assert config.n_layer != config.n_head
    torch.manual_seed(args.seed)
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    name_ids = [tok.encode(" " + n, add_special_tokens=False)[0] for n in ioi.NAMES]
    tie = None
    if args.name_dim > 0:
        tie = NameEmbeddingTie(model.transformer.wte, name_ids, args.name_dim, args.seed,
                               args.name_scale)
    print(f"model: {n_params:,} parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-8,
    )

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.max_steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    # validation for early stopping: held-out split, different seed from the test set
    val_pairs = ioi.generate_ioi_pairs(300, seed=999, split="heldout")
    val_train_pairs = ioi.generate_ioi_pairs(300, seed=998, split="train")
    # diagnostics: held-out names with training templates and vice versa
    heldout_t = set(range(len(ioi.TRAIN_TEMPLATES), len(ioi.TEMPLATES)))
    heldout_n = set(ioi.HELDOUT_NAMES)
    mixed = ioi.generate_ioi_pairs(20000, seed=997, split="all")
    diag = {
        "HN_TT": [p for p in mixed if p["io"] in heldout_n and p["s"] in heldout_n
                  and p["template"] not in heldout_t][:200],
        "TN_HT": [p for p in mixed if p["io"] not in heldout_n and p["s"] not in heldout_n
                  and p["template"] in heldout_t][:200],
    }
    history = []
    t_train = time.time()
    step = 0
    hits = 0
    for step in range(1, args.max_steps + 1):
        model.train()
        ids, mask, wt = make_batch(tok, step, args.seed, args.batch_size,
                                   args.filler_frac, args.answer_weight, args.prefix_prob,
                                   args.insert_prob)
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1)
        logits = model(input_ids=ids, attention_mask=mask).logits
        tgt = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], tok.pad_token_id)], 1)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1),
                             reduction="none").view_as(wt)
        loss = (ce * wt).sum() / wt.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        name_scale = tie.project() if tie is not None else None

        if step % args.eval_every == 0 or step == args.max_steps:
            model.eval()
            v = evaluate(hf_fn(model), tok, val_pairs, keys=("clean",))
            vt = evaluate(hf_fn(model), tok, val_train_pairs, keys=("clean",))
            rec = {"step": step, "loss": round(loss.item(), 4),
                   "val_heldout_acc": v["clean_accuracy"],
                   "val_heldout_logit_diff": round(v["clean_mean_logit_diff"], 3),
                   "val_train_acc": vt["clean_accuracy"],
                   "val_train_logit_diff": round(vt["clean_mean_logit_diff"], 3),
                   **{f"diag_{k}": [round(r["clean_accuracy"], 3),
                                    round(r["clean_mean_logit_diff"], 2)]
                      for k, r in ((k, evaluate(hf_fn(model), tok, v, keys=("clean",)))
                                   for k, v in diag.items())},
                   "name_scale": None if name_scale is None else round(name_scale, 3),
                   "elapsed_s": round(time.time() - t_train, 1)}
            history.append(rec)
            print(json.dumps(rec), flush=True)
            good = (v["clean_accuracy"] >= args.target_acc
                    and v["clean_mean_logit_diff"] >= args.target_logit_diff)
            hits = hits + 1 if good else 0
            if step >= args.min_steps and hits >= 2:
                print(f"early stop at step {step}", flush=True)
                break
    train_time = time.time() - t_train
    steps_done = step

    model.eval()
    test_pairs = ioi.generate_ioi_pairs(500, seed=12345, split="heldout")
    test = evaluate(hf_fn(model), tok, test_pairs)
    test_train = evaluate(hf_fn(model), tok, ioi.generate_ioi_pairs(500, seed=12345, split="train"))
    print("held-out test:", json.dumps(test), flush=True)
    print("train-split test:", json.dumps(test_train), flush=True)

    for f in out.glob("*"):
        if f.is_file() and f.name != ".gitkeep":
            f.unlink()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for f in out.glob("*"):
        if f.is_file():
            f.chmod(0o644)
    bridge_check = None
    if not args.no_bridge_check:
        bridge_check = verify_bridge(out)
        print("bridge check:", json.dumps(bridge_check), flush=True)
    info = {
        "description": "attrscope default model: 4-layer GPT-2 trained from scratch on "
                       "synthetic IOI prompts by scripts/train_default_model.py",
        "seed": args.seed,
        "hyperparameters": {k: (str(v) if isinstance(v, Path) else v)
                            for k, v in vars(args).items() if k not in ("out", "check", "verify", "no_bridge_check",
                                         "no_quality_gate")},
        "architecture": {"n_layer": 4, "n_head": 8, "n_embd": 128, "n_inner": 512,
                         "n_positions": 64, "vocab_size": len(tok),
                         "tie_word_embeddings": True, "n_parameters": n_params},
        "optimizer": "AdamW(betas=(0.9, 0.98)), linear warmup + cosine decay to 10%, "
                     "grad clip 1.0, weight decay on matrices only",
        "data": {"ioi": "generate_ioi_pairs(split='train') (training names and templates), "
                        "full LM loss on '<|endoftext|>' + prompt + answer + '.', "
                        "answer token weighted by answer_weight",
                 "filler": "generate_filler_sentences(names=NAMES): non-IOI sentences "
                           "mentioning all names (held-out names included)",
                 "n_train_names": len(ioi.TRAIN_NAMES), "n_heldout_names": len(ioi.HELDOUT_NAMES),
                 "n_train_templates": len(ioi.TRAIN_TEMPLATES),
                 "n_heldout_templates": len(ioi.HELDOUT_TEMPLATES)},
        "name_embeddings": "tied embedding rows of all names constrained during training to "
                           "scale * R[name] + shared (R: fixed random unit vectors in a "
                           "name_dim-dim random subspace; scale, shared learned), so held-out "
                           "names are interchangeable with training names; saved model is a "
                           "plain GPT2LMHeadModel",
        "augmentation": "name-free sentences prepended (prefix_prob) or inserted at a sentence "
                        "boundary (insert_prob) of training IOI prompts",
        "early_stopping": "on generate_ioi_pairs(300, seed=999, split='heldout') "
                          "(disjoint seed from the test set)",
        "steps": steps_done,
        "train_time_s": round(train_time, 1),
        "heldout_eval": {"set": "generate_ioi_pairs(500, seed=12345, split='heldout')",
                         "accuracy": test["clean_accuracy"],
                         "mean_logit_diff": test["clean_mean_logit_diff"],
                         "min_logit_diff": test["clean_min_logit_diff"],
                         "top1_is_answer": test["clean_top1_is_answer"],
                         "corrupted_mean_logit_diff": test["corrupted_mean_logit_diff"],
                         "corrupted_accuracy": test["corrupted_accuracy"]},
        "train_split_eval": {"set": "generate_ioi_pairs(500, seed=12345, split='train')",
                             "accuracy": test_train["clean_accuracy"],
                             "mean_logit_diff": test_train["clean_mean_logit_diff"],
                             "corrupted_mean_logit_diff": test_train["corrupted_mean_logit_diff"]},
        "bridge_check": bridge_check,
        "history": history,
        "versions": {"torch": torch.__version__,
                     "transformers": __import__("transformers").__version__,
                     "tokenizers": __import__("tokenizers").__version__,
                     "python": platform.python_version()},
        "threads": args.threads,
    }
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "training.json").chmod(0o644)
    size = sum(f.stat().st_size for f in out.glob("*") if f.is_file())
    print(f"saved to {out} ({size / 1e6:.2f} MB) in {time.time() - t0:.0f}s total", flush=True)

    ok = test["clean_accuracy"] >= 0.98 and test["clean_mean_logit_diff"] >= 3.0
    if not ok:
        print("FAILED: held-out accuracy/logit diff below requirement", flush=True)
    if args.check:
        shipped = DEFAULT_OUT / "model.safetensors"
        if shipped.exists():
            same = sha256_file(shipped) == sha256_file(out / "model.safetensors")
            same_tok = (DEFAULT_OUT / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
            print(f"check: weights identical to shipped: {same}; tokenizer identical: {same_tok}")
            try:
                shipped_info = json.loads((DEFAULT_OUT / "training.json").read_text())["heldout_eval"]
                print(f"check: shipped held-out acc {shipped_info['accuracy']:.4f} "
                      f"logit diff {shipped_info['mean_logit_diff']:.3f}; this run acc "
                      f"{test['clean_accuracy']:.4f} logit diff {test['clean_mean_logit_diff']:.3f}")
            except Exception as e:  # pragma: no cover
                print(f"check: could not read shipped training.json: {e}")
        else:
            print("check: no shipped model to compare with")
    return 0 if ok or args.no_quality_gate else 1


if __name__ == "__main__":
    sys.exit(main())
