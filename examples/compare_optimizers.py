"""Newton-CG, FITRE, SGD and Adam (small learning-rate grids, as the FITRE paper tunes SGD) on the same
model and data: epochs and wall time to 97% test accuracy, and the final accuracy.

    python examples/compare_optimizers.py [--epochs 10] [--plot compare.png] [--blas-threads 1]

BLAS runs on one thread by default (where threadpoolctl is installed): the small CNN's GEMMs are too
small to gain from threads, and on a 2-core machine shared with other work, two OpenBLAS threads made
every method 2-7x slower in our runs, which would turn the wall-time column into a measure of the load.
"""
import argparse
import os
import platform

from rgraph import data, nn
from rgraph.train import train

RUNS = [("fitre", {}), ("newton-cg", {}), ("sgd", {"lr": 0.01}), ("sgd", {"lr": 0.05}), ("sgd", {"lr": 0.2}),
        ("adam", {"lr": 1e-3}), ("adam", {"lr": 1e-2})]


def first_reaching(history, target):
    for record in history:
        if record["test_accuracy"] >= target:
            return record["epoch"], record["time"]
    return None, None


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--target", type=float, default=0.97)
    p.add_argument("--plot", default="compare_optimizers.png")
    p.add_argument("--blas-threads", type=int, default=1, help="0: leave BLAS threads as they are")
    args = p.parse_args()
    threads = "default"
    if args.blas_threads:
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(args.blas_threads, user_api="blas")
            threads = str(args.blas_threads)
        except ImportError:
            pass
    dataset = data.load("digits")
    print(f"digits, small CNN, batch 128, up to {args.epochs} epochs; "
          f"{platform.machine()} CPU, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"BLAS threads {threads}")
    results = []
    for name, settings in RUNS:
        graph = nn.small_cnn(input_shape=dataset.input_shape, num_classes=dataset.num_classes, l2=1e-4)
        _, history = train(graph, dataset, name, epochs=args.epochs, batch_size=128, settings=settings,
                           progress=False, log=lambda line: None)
        label = name + "".join(f" {k}={v:g}" for k, v in settings.items())
        results.append((label, history))
    def best_of(family):
        return min((r for r in results if r[0].startswith(family + " ")),
                   key=lambda r: (first_reaching(r[1], args.target)[1] or float("inf"), -r[1][-1]["test_accuracy"]))
    best = {id(best_of("sgd")): "  <- best SGD", id(best_of("adam")): "  <- best Adam"}
    print(f"{'optimizer':<18} {'epochs to ' + format(args.target, '.0%'):>14} {'seconds to it':>14} "
          f"{'final acc':>10} {'total s':>8}")
    for run in results:
        label, history = run
        epoch, seconds = first_reaching(history, args.target)
        mark = best.get(id(run), "")
        print(f"{label:<18} {epoch if epoch else '-':>14} {f'{seconds:.2f}' if seconds else '-':>14} "
              f"{100 * history[-1]['test_accuracy']:>9.2f}% {history[-1]['time']:>8.2f}{mark}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for label, history in results:
        ax[0].plot([r["time"] for r in history], [100 * r["test_accuracy"] for r in history], label=label)
        ax[1].plot([r["epoch"] for r in history], [r["train_loss"] for r in history], label=label)
    ax[0].set(xlabel="wall time (s)", ylabel="test accuracy (%)", ylim=(80, 100))
    ax[1].set(xlabel="epoch", ylabel="train loss", yscale="log")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
