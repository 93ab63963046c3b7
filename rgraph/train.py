"""The training loop behind ``rgraph train``: epochs of optimiser steps, evaluation, metrics, checkpoints.

    rgraph train                                   # the default: small CNN on digits with FITRE
    rgraph train --optimizer newton-cg --epochs 20 --out runs/ncg
    rgraph train --optimizer newton-cg --epochs 30 --out runs/ncg --resume   # the same options, more epochs

A run writes ``config.json``, ``metrics.jsonl`` (one JSON object per epoch), ``checkpoint.pkl``
(parameters, optimiser state, position and, mid-epoch, the epoch's step statistics so far; written to a
temporary file, flushed and renamed, so a crash never leaves a half-written checkpoint) and, where
matplotlib is installed, ``curves.png``.
Mini-batch order depends only on (seed, epoch) and the optimisers draw their randomness from
(seed, step), so ``--resume`` continues the very same trajectory.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time

import numpy as np

from . import cli
from . import data as datasets
from .backends import get_backend
from .compiler import compile
from .errors import RgraphError, fmt_shape
from .graph import Graph
from .nn import MODELS
from .optim import OPTIMIZERS, finite, make_optimizer

# Defaults per optimiser, measured on digits with the default small CNN, batch 128, l2 1e-4:
# newton-cg: simpleNN's 5% Gauss-Newton subsample is 6 samples of a 128 batch, too noisy a curvature
#   (95.8% best in 6 epochs); 20% (25 samples) reaches 97% in epoch 4 and 98.6% by epoch 10.
# sgd: lr 0.05 is the best of the grid {0.01, 0.05, 0.2} in examples/compare_optimizers.py.
# fitre keeps the paper's settings (optim/fitre.py); adam its usual 1e-3.
OPTIMIZER_DEFAULTS = {
    "fitre": {},
    "newton-cg": {"gn_fraction": 0.2},
    "kfac": {"lr": 0.1},
    "sgd": {"lr": 0.05},
    "adam": {"lr": 1e-3},
}


class SetupError(ValueError):
    """A run that cannot start as asked (model, data, optimiser settings, backend, output folder, checkpoint),
    found before the first step; ``rgraph train`` prints it as one line and exits with status 2."""


class ResumeError(SetupError):
    """--resume found a checkpoint of a different run (model, data, optimiser, settings, ...)."""


class NonFiniteParameters(RuntimeError):
    """An optimiser handed back parameters with a NaN or an infinity: training stops before they are saved."""


def build_model(spec: str, input_shape, num_classes, l2) -> Graph:
    """A zoo name from ``rgraph.nn.MODELS``, built for the data's shape and classes, or
    ``path/to/file.py:function`` (or ``package.module:function``), called with no arguments."""
    if spec in MODELS:
        return MODELS[spec](input_shape=input_shape, num_classes=num_classes, l2=l2)
    try:   # the loader of `rgraph show` and `rgraph cost`, so that train reports a bad model in the same words
        return cli.build_model(spec)
    except cli.UsageError as e:
        raise SetupError(str(e)) from None
    except RgraphError as e:   # a RuleError is no ValueError, so cli.build_model lets it through
        raise SetupError(f"model {spec!r} could not be built: {type(e).__name__}: {e}") from None


def check_model_fits(graph, dataset):
    """Raise a SetupError, before any step, where the model cannot take the data: training feeds each batch
    as the inputs ``x`` (the samples) and ``y`` (int64 labels) and reads class scores from the output (N, classes)."""
    names = sorted(graph.inputs)
    if names != ["x", "y"]:
        raise SetupError(f"model {graph.name!r} has inputs {names}; rgraph train needs exactly two, named 'x' "
                         f"(the samples, (N, C, H, W) or flat (N, features)) and 'y' (the int64 labels, (N,))")
    x, y = graph.inputs["x"], graph.inputs["y"]
    flat = (int(np.prod(dataset.input_shape)),)
    if x.shape[1:] not in (tuple(dataset.input_shape), flat):
        raise SetupError(f"model {graph.name!r} takes x of shape {fmt_shape(x.shape)}, but the {dataset.name} samples "
                         f"are {fmt_shape((None, *dataset.input_shape))} (or flat {fmt_shape((None, *flat))})")
    if y.type.shape != (None,) or y.dtype != "int64":
        raise SetupError(f"model {graph.name!r} takes y as {y.type}; rgraph train feeds class labels, int64(N,)")
    classes = (dataset.num_classes,)
    if graph.z is not None and graph.z.shape[1:] != classes:
        raise SetupError(f"model {graph.name!r} has outputs {fmt_shape(graph.z.shape)}, but the {dataset.name} data "
                         f"has {dataset.num_classes} classes: the output must be {fmt_shape((None, *classes))}")


def save_checkpoint(path, payload):
    """Write atomically: a temporary file in the same folder, flushed to disk, then renamed over."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path):
    with open(path, "rb") as f:
        return pickle.load(f)


CHECKPOINT_KEYS = ("theta", "optimizer", "epoch", "batch", "history", "elapsed", "config")


def read_checkpoint(path):
    """A checkpoint to resume from, or a SetupError naming the file when it cannot be read as one."""
    try:
        state = load_checkpoint(path)
    except Exception as e:   # a damaged pickle fails in many ways (UnpicklingError, EOFError, ValueError, ...)
        raise SetupError(f"--resume: the checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                         f"it is damaged or not an rgraph checkpoint") from None
    missing = [key for key in CHECKPOINT_KEYS if key not in state] if isinstance(state, dict) else CHECKPOINT_KEYS
    if missing:
        raise SetupError(f"--resume: the checkpoint {path} cannot be read: it is not an rgraph checkpoint "
                         f"(no {', '.join(missing)})")
    return state


def evaluate(prog, theta, x, y, batch_size=1000):
    """(mean loss including l2, accuracy) over a dataset, in chunks."""
    total, correct = 0.0, 0
    for k in range(0, len(x), batch_size):
        labels = y[k:k + batch_size]
        st = prog.bind(theta, {"x": x[k:k + batch_size], "y": labels})
        total += st.loss * len(labels)
        correct += int((prog.backend.to_host(st.output).argmax(axis=1) == prog.backend.to_host(labels)).sum())
    return total / len(x), correct / len(x)


def _progress(iterable, total, enabled, desc):
    """A tqdm bar on stderr where tqdm is installed; otherwise a plain counter, rewritten in place on a
    terminal and left out when stderr is a file or a pipe (logs get only the per-epoch lines)."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return _plain_progress(iterable, total, desc) if sys.stderr.isatty() else iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr)


def _plain_progress(iterable, total, desc):
    for k, item in enumerate(iterable, start=1):
        yield item
        print(f"\r{desc}: batch {k}/{total}", end="", file=sys.stderr, flush=True)
    print("\r" + " " * (len(desc) + 24) + "\r", end="", file=sys.stderr, flush=True)


def _epoch_figures(step_stats):
    """The optimiser's own figures for an epoch's log line."""
    out = {"train_loss": float(np.mean([s["loss"] for s in step_stats])) if step_stats else float("nan")}
    for key in ("cg_iters", "lam", "radius", "rho"):
        values = [s[key] for s in step_stats if key in s and np.isfinite(s[key])]
        if values:
            out[key] = float(np.mean(values)) if key == "cg_iters" or key == "rho" else float(values[-1])
    out["rejected"] = int(step_stats[-1]["rejected"]) if step_stats else 0
    return out


# What fixes a run's trajectory: a resumed run must agree with its checkpoint on each of these (epochs may grow).
TRAJECTORY = ("model", "dataset", "optimizer", "settings", "batch_size", "seed", "dtype", "parameters", "l2")


def _same_run(saved, config):
    """Raise a ResumeError naming what differs between a checkpoint's configuration and this run's."""
    saved, config = json.loads(json.dumps(saved, default=str)), json.loads(json.dumps(config, default=str))
    differ = [f"{key}: checkpoint {saved.get(key)!r}, now {config.get(key)!r}"
              for key in TRAJECTORY if saved.get(key) != config.get(key)]
    if differ:
        raise ResumeError("--resume: this run differs from the checkpoint's, so it would not continue the same "
                         "trajectory (" + "; ".join(differ) + ")")


def _write_metrics(out, history):
    """metrics.jsonl holds exactly the epochs in ``history`` (on resume, those the checkpoint knows about)."""
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in history)


def train(graph, dataset, optimizer="fitre", *, epochs=10, batch_size=128, seed=0, out=None, resume=False,
          dtype="float64", backend="numpy", settings=None, progress=True, log=print, checkpoint_every=0,
          on_start=None):
    """Train ``graph`` on ``dataset``; returns (theta as a host array, history of per-epoch metrics).
    ``on_start()``, if given, is called once everything is set up, before the first step (a setup
    error is raised before it).

    Randomness is counter-based: the batch order of an epoch comes from ``(seed, epoch)`` and each
    optimiser step draws from ``(settings["seed"], step)``, so the checkpoint's position (epoch, batch)
    and the optimiser's step count are the whole random state, and ``resume=True`` continues the
    very same trajectory.

        >>> theta, history = train(nn.small_cnn(l2=1e-4), data.load("digits"), "fitre", epochs=1)
    """
    run = _Run(graph, dataset, optimizer, epochs=epochs, batch_size=batch_size, seed=seed, out=out, dtype=dtype,
               backend=backend, settings=settings)
    if resume:
        run.restore()
        if run.start_epoch >= epochs:   # leave the finished run's files as they are
            log(f"already trained to epoch {run.start_epoch}; raise --epochs (now {epochs}) to continue")
            return run.prog.backend.to_host(run.theta), run.history
    if on_start is not None:
        on_start()
    run.start_files()
    for epoch in range(run.start_epoch, epochs):
        log(format_record(run.epoch(epoch, progress, checkpoint_every)))
    if out and run.history:
        plot_curves(run.history, os.path.join(out, "curves.png"), title=f"{graph.name} / {optimizer}")
    return run.prog.backend.to_host(run.theta), run.history


def _compile(graph, backend, dtype):
    """The program, or a SetupError for what stops it: no usable CuPy for backend 'cupy', a model without
    an output or a loss, an op without the rule a pass needs."""
    try:
        backend = get_backend(backend)
    except RuntimeError as e:   # the message says what backend 'cupy' needs
        raise SetupError(str(e)) from None
    try:
        return compile(graph, backend=backend, dtype=dtype)
    except RgraphError as e:
        raise SetupError(f"model {graph.name!r} cannot be compiled: {type(e).__name__}: {e}") from None


class _Run:
    """One training run's state (program, optimiser, data on the backend, parameters, position, history)
    and the files it keeps in ``out``."""

    def __init__(self, graph, dataset, optimizer, *, epochs, batch_size, seed, out, dtype, backend, settings):
        if batch_size < 1:
            raise SetupError(f"the batch size must be at least 1, got {batch_size}")
        if out and os.path.exists(out) and not os.path.isdir(out):
            raise SetupError(f"the output folder {out!r} is a file; give --out a folder (new or existing)")
        self.prog = prog = _compile(graph, backend, dtype)
        check_model_fits(graph, dataset)
        if graph.inputs["x"].ndim == 2:           # MLPs take flat inputs, CNNs N x C x H x W
            dataset = dataset.flat()
        settings = {**OPTIMIZER_DEFAULTS.get(optimizer, {}), **(settings or {})}
        if optimizer in ("fitre", "kfac", "newton-cg"):
            settings.setdefault("seed", seed)
        try:
            self.opt = make_optimizer(optimizer, prog, **settings)
        except ValueError as e:   # an unknown optimiser or a setting out of range; the message names it
            raise SetupError(str(e)) from None
        self.optimizer, self.batch_size, self.seed, self.out = optimizer, batch_size, seed, out
        put = prog.backend.asarray
        self.train_set = put(dataset.x_train.astype(dtype)), put(dataset.y_train)
        self.test_set = put(dataset.x_test.astype(dtype)), put(dataset.y_test)
        self.theta, self.start_epoch, self.start_batch, self.history, self.elapsed = prog.init_params(seed), 0, 0, [], 0.0
        self.resumed_stats = []   # the step statistics of the batches before a mid-epoch checkpoint
        self.ckpt = os.path.join(out, "checkpoint.pkl") if out else None
        self.config = {"model": graph.name, "dataset": dataset.name, "optimizer": optimizer,
                       "settings": self.opt.settings, "epochs": epochs, "batch_size": batch_size, "seed": seed,
                       "dtype": dtype, "backend": backend, "parameters": prog.size, "l2": graph.l2}

    def restore(self):
        """Continue from the checkpoint in ``out``, which must be of this very run (ResumeError if not)."""
        if not self.ckpt or not os.path.exists(self.ckpt):
            raise FileNotFoundError(f"--resume: no checkpoint at {self.ckpt!r}")
        state = read_checkpoint(self.ckpt)
        _same_run(state["config"], self.config)
        self.theta = self.prog.backend.asarray(state["theta"])
        self.opt.load_state_dict(state["optimizer"])
        self.start_epoch, self.start_batch = state["epoch"], state["batch"]
        self.history, self.elapsed = state["history"], state["elapsed"]
        self.resumed_stats = list(state.get("step_stats", []))   # checkpoints before this key resume without them

    def start_files(self):
        if self.out:
            try:
                os.makedirs(self.out, exist_ok=True)
            except OSError as e:
                raise SetupError(f"cannot create the output folder {self.out!r}: {e.strerror}") from None
            with open(os.path.join(self.out, "config.json"), "w") as f:
                json.dump(self.config, f, indent=2, default=str)
            _write_metrics(self.out, self.history)

    def checkpoint(self, epoch, batch, elapsed, step_stats=()):
        """Save the position (``batch`` steps into ``epoch``) and, mid-epoch, the statistics of those steps,
        so that the resumed epoch's record covers all of its batches."""
        host = self.prog.backend.to_host(self.theta)
        if not finite(host):                  # the optimisers reject such steps; this guards the file regardless
            raise NonFiniteParameters(f"parameters are not finite at epoch {epoch + 1}, batch {batch}; "
                                      f"the checkpoint {self.ckpt} keeps the last finite ones")
        save_checkpoint(self.ckpt, {"theta": host, "optimizer": self.opt.state_dict(), "epoch": epoch, "batch": batch,
                                    "history": self.history, "elapsed": elapsed, "config": self.config,
                                    "step_stats": list(step_stats),
                                    "rng": {"batch_order": [self.seed, epoch], "optimizer_step": self.opt.steps}})

    def epoch(self, epoch, progress, checkpoint_every):
        """One epoch of steps (from the restored batch on a resumed first epoch), then its evaluation,
        metrics line and checkpoint; returns the epoch's record."""
        t0, step_stats, self.resumed_stats = time.perf_counter(), self.resumed_stats, []
        x, y = self.train_set
        n_batches = datasets.num_batches(len(y), self.batch_size)
        batches = datasets.batches(x, y, self.batch_size, seed=self.seed, epoch=epoch, start=self.start_batch)
        for k, batch in enumerate(_progress(batches, n_batches - self.start_batch, progress, f"epoch {epoch + 1}"),
                                  start=self.start_batch):
            self.theta, stats = self.opt.step(self.theta, batch)
            if not finite(self.theta):
                raise NonFiniteParameters(f"optimizer {self.optimizer!r} returned non-finite parameters at epoch "
                                          f"{epoch + 1}, batch {k + 1} (stats {stats}); nothing was saved")
            step_stats.append(stats)
            if self.ckpt and checkpoint_every and (k + 1) % checkpoint_every == 0 and k + 1 < n_batches:
                self.checkpoint(epoch, k + 1, self.elapsed + time.perf_counter() - t0, step_stats)
        self.start_batch = 0
        self.elapsed += time.perf_counter() - t0
        test_loss, test_acc = evaluate(self.prog, self.theta, *self.test_set)
        record = {"epoch": epoch + 1, **_epoch_figures(step_stats), "test_loss": test_loss,
                  "test_accuracy": test_acc, "time": self.elapsed, "steps": self.opt.steps}
        self.history.append(record)
        if self.out:
            with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            self.checkpoint(epoch + 1, 0, self.elapsed)
        return record


def format_record(r):
    extra = "".join(f"  {label} {r[key]:{fmt}}" for key, label, fmt in
                    (("cg_iters", "cg", ".1f"), ("lam", "lambda", ".3g"), ("radius", "radius", ".3g"))
                    if key in r)
    return (f"epoch {r['epoch']:3d}  train loss {r['train_loss']:.4f}  test loss {r['test_loss']:.4f}  "
            f"test acc {100 * r['test_accuracy']:6.2f}%  time {r['time']:7.2f}s{extra}  rejected {r['rejected']}")


def plot_curves(history, path, title=""):
    """Loss and accuracy against wall time and epoch; skipped without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for col, key, label in ((0, "time", "wall time (s)"), (1, "epoch", "epoch")):
        xs = [r[key] for r in history]
        axes[0, col].plot(xs, [r["train_loss"] for r in history], label="train")
        axes[0, col].plot(xs, [r["test_loss"] for r in history], label="test")
        axes[0, col].set(xlabel=label, ylabel="loss", yscale="log")
        axes[0, col].legend()
        axes[1, col].plot(xs, [100 * r["test_accuracy"] for r in history])
        axes[1, col].set(xlabel=label, ylabel="test accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --- the command line -------------------------------------------------------------------------

EXAMPLES = """examples:
  rgraph train                                # the small CNN on digits with FITRE, into runs/small_cnn-fitre
  rgraph train --model mlp --optimizer sgd --lr 0.1 --batch-size 64
  rgraph train --optimizer newton-cg --epochs 20 --out runs/ncg
  rgraph train --optimizer newton-cg --epochs 30 --out runs/ncg --resume     # the same run, on to epoch 30
  rgraph train --model my_net.py:build --data npz --data-path my_data.npz
  rgraph train --data mnist --data-path ~/mnist --checkpoint-every 100 --blas-threads 1
A run writes OUT/config.json, metrics.jsonl (one line per epoch), checkpoint.pkl and curves.png.
A model from a file must take inputs named x (the samples) and y (int64 labels) and output (N, classes).
exit status: 0 when training ends, 1 when the parameters become non-finite, 2 for bad input, 130 on Ctrl-C.
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written, and every flag's default shown, except where there is none to show
    (switches, settings that each optimiser defaults on its own)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default is None or isinstance(default, (bool, list)) or default == argparse.SUPPRESS:
            return text
        return text + " (default: %(default)s)"


def _setting(text):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass
    return key.replace("-", "_"), value


def _setting_defaults(key):
    """'default: fitre 1.0, newton-cg 1.0': where each optimiser taking ``key`` starts in rgraph train."""
    values = [f"{name} {OPTIMIZER_DEFAULTS.get(name, {}).get(key, cls.defaults[key])}"
              for name, cls in sorted(OPTIMIZERS.items()) if key in cls.defaults]
    return "default: " + ", ".join(values)


def add_arguments(p: argparse.ArgumentParser):
    # rgraph.cli builds the parser for `rgraph train`, so the help's formatter and examples are set here
    p.formatter_class, p.epilog = _HelpFormatter, EXAMPLES
    p.add_argument("--model", default="small_cnn", help="zoo name (" + ", ".join(sorted(MODELS))
                   + ") or path/to/file.py:function returning a Graph with inputs x and y")
    p.add_argument("--data", default="digits", help=f"dataset: {', '.join(sorted(datasets.LOADERS))}")
    p.add_argument("--data-path", default=None, metavar="PATH", help="folder (mnist, cifar10) or file (npz) to read")
    p.add_argument("--optimizer", default="fitre", choices=sorted(OPTIMIZERS), help="the optimiser")
    p.add_argument("--epochs", type=cli.at_least(1), default=5, metavar="N",
                   help="train up to this epoch (with --resume, in all)")
    p.add_argument("--batch-size", type=cli.at_least(1), default=128, metavar="N", help="samples per optimiser step")
    p.add_argument("--l2", type=float, default=1e-4, metavar="X", help="l2 coefficient for zoo models")
    p.add_argument("--lr", type=float, help=f"learning rate ({_setting_defaults('lr')})")
    p.add_argument("--lam", type=float, help=f"initial Levenberg-Marquardt lambda ({_setting_defaults('lam')})")
    p.add_argument("--radius", type=float, help="initial trust-region radius, newton-cg with --set curvature=hessian "
                   f"({_setting_defaults('radius')})")
    p.add_argument("--damping", type=float, help=f"KFAC damping gamma ({_setting_defaults('damping')})")
    p.add_argument("--gn-fraction", type=float,
                   help=f"share of the batch for Gauss-Newton products ({_setting_defaults('gn_fraction')})")
    p.add_argument("--cg-maxiter", type=int,
                   help=f"CG iteration cap per Newton step ({_setting_defaults('cg_maxiter')})")
    p.add_argument("--set", dest="settings", action="append", type=_setting, default=[], metavar="KEY=VALUE",
                   help="any other optimiser setting, e.g. --set gn_fraction=0.05 --set curvature=gn")
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "auto"],
                   help="auto: cupy where a GPU is usable, else numpy")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="the compute dtype")
    p.add_argument("--seed", type=cli.at_least(0), default=0, metavar="N",
                   help="data split, initial parameters, batch order")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/MODEL-OPTIMIZER)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pkl (same options)")
    p.add_argument("--blas-threads", type=cli.at_least(1), default=None, metavar="N",
                   help="limit BLAS to N threads (needs threadpoolctl); on small models 1 is often fastest, "
                        "and far faster on a busy machine")
    p.add_argument("--checkpoint-every", type=cli.at_least(0), default=0, metavar="N",
                   help="also checkpoint every N batches; 0: only at the end of each epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """``rgraph train``: exit status 0 when training ends, 1 when the parameters become non-finite, 2 (one
    line on stderr) for input it cannot use, 130 on Ctrl-C, saying where the last checkpoint is."""
    out = args.out or os.path.join("runs", f"{args.model.replace(os.sep, '_').replace(':', '_')}-{args.optimizer}")
    earlier = None if args.resume else _file_stamp(os.path.join(out, "checkpoint.pkl"))
    try:
        return _run(args, out, replaces_checkpoint=earlier is not None)
    except KeyboardInterrupt:
        if sys.stderr.isatty():
            print(file=sys.stderr)   # off the progress bar's line
        print(interrupted_message(out, earlier), file=sys.stderr)
        return 130


def _run(args, out, replaces_checkpoint) -> int:
    settings = dict(args.settings)
    for flag in ("lr", "lam", "radius", "damping", "gn_fraction", "cg_maxiter"):
        if getattr(args, flag) is not None:
            settings[flag] = getattr(args, flag)
    accepted = OPTIMIZERS[args.optimizer].defaults
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        print(f"rgraph train: optimizer {args.optimizer!r} has no setting(s) {unknown}; it takes {sorted(accepted)}",
              file=sys.stderr)
        return 2
    if args.blas_threads is not None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            print("rgraph train: --blas-threads needs threadpoolctl (pip install threadpoolctl)", file=sys.stderr)
            return 2
        threadpool_limits(args.blas_threads, user_api="blas")   # for the rest of this process
    try:
        dataset = datasets.load(args.data, args.data_path, seed=args.seed)
        graph = build_model(args.model, dataset.input_shape, dataset.num_classes, args.l2)
    except (ValueError, FileNotFoundError) as e:
        print(f"rgraph train: {e}", file=sys.stderr)
        return 2
    def header():   # once the run is set up: a setup error stands alone
        print(f"{graph.name} on {dataset} with {args.optimizer}; writing {out}")
        if replaces_checkpoint:
            print(f"rgraph train: warning: {out} holds the checkpoint of an earlier run; this run starts over and "
                  f"replaces it (add --resume to continue that run instead)", file=sys.stderr)
    try:
        train(graph, dataset, args.optimizer, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
              out=out, resume=args.resume, dtype=args.dtype, backend=args.backend, settings=settings,
              progress=not args.no_progress, checkpoint_every=args.checkpoint_every, on_start=header)
    except (FileNotFoundError, SetupError) as e:   # found before the first step: no checkpoint, a bad setting, ...
        print(f"rgraph train: {e}", file=sys.stderr)
        return 2
    except NonFiniteParameters as e:
        print(f"rgraph train: {e}", file=sys.stderr)
        return 1
    return 0


def _file_stamp(path):
    """What tells one version of a file from the next (a checkpoint is replaced, never rewritten in place)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def interrupted_message(out, earlier_stamp):
    """One line for Ctrl-C: where this run's last checkpoint is and how to continue from it. A checkpoint
    still stamped ``earlier_stamp`` belongs to an earlier run that this one was about to replace."""
    path = os.path.join(out, "checkpoint.pkl")
    stamp = _file_stamp(path)
    position = None
    if stamp is not None and stamp != earlier_stamp:
        try:
            state = load_checkpoint(path)
            position = state["epoch"], state["batch"]
        except Exception:   # unreadable: report it as no checkpoint rather than fail while reporting
            position = None
    if position is None:
        return (f"rgraph train: interrupted before this run wrote a checkpoint in {out}; nothing to resume "
                f"(--checkpoint-every N also checkpoints within epochs)")
    epoch, batch = position
    where = f"at the end of epoch {epoch}" if batch == 0 else f"in epoch {epoch + 1} after batch {batch}"
    return (f"rgraph train: interrupted; the last checkpoint, {path}, is {where}; "
            f"continue with the same options and --resume --out {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rgraph train", description="Train a model with an optimiser.")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
