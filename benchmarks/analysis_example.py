"""Start your own analysis: Figure 2 of the paper by hand, from a results table and pandas.

    python benchmarks/analysis_example.py results/quickstart --out accuracy.png

A results directory is one Parquet dataset with one row per (trial, round); pandas reads
all of it in one call.  (`warmstart report` draws this and more; this script shows the
few lines underneath, to copy and change.)
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")  # draw to files, no display needed

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import pandas as pd  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results directory (or a URI pyarrow understands, e.g. s3://...)")
    parser.add_argument("--out", default="accuracy_by_hand.png", help="the PNG to write")
    args = parser.parse_args(argv)

    # 1. The whole table: pyarrow finds every <trial_id>-roundNNNN.parquet under the
    #    directory and skips _warmstart/ and _report/ (names starting with "_").
    df = pd.read_parquet(args.results)
    print(f"{df['trial_id'].nunique()} trials, {len(df)} rows; columns: {', '.join(df.columns[:12])}, ...")

    # 2. A trial is one (config, seed); the seeds of one config are the trials that agree on
    #    everything but the seed.  Here the configs differ by init and acquisition strategy,
    #    the config's columns cfg.init.name and cfg.acquisition.name (in a table of your own,
    #    add the cfg.* columns your grid varies: cfg.init.shrink, cfg.model.name, ...).
    #    Average each round over seeds.  n_labeled is the same for every seed of a round.
    strategy = ["cfg.init.name", "cfg.acquisition.name"]
    curves = (
        df.groupby([*strategy, "n_labeled"], observed=True)["test_acc"]
        .agg(["mean", "std", "count"])  # count: how many seeds reached this round
        .reset_index()
    )
    print(curves.groupby(strategy, observed=True).tail(1).to_string(index=False))  # the last round of each

    # 3. One line per strategy: the mean over seeds, and a band of ±1 standard deviation.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (init, acquisition), line in curves.groupby(strategy, observed=True):
        std = line["std"].fillna(0.0)  # one seed: no spread
        (drawn,) = ax.plot(line["n_labeled"], line["mean"], marker="o", ms=3, label=f"{init} · {acquisition}")
        ax.fill_between(line["n_labeled"], line["mean"] - std, line["mean"] + std, color=drawn.get_color(), alpha=0.15)
    ax.set_xlabel("labeled samples")
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy vs labeled samples (mean ± 1 std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(title="init · acquisition", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    plt.close(fig)
    print(f"wrote {args.out}")

    # 4. From here: the cost side of the paper's question is one groupby away, e.g.
    #    df.groupby([*strategy, "seed"], observed=True)["steps"].sum()
    #    gives each trial's optimizer steps (its train_seconds are comparable only between
    #    rows whose train_timing is "alone": a stacked ensemble's members get shares of its
    #    time, docs/results.md); engine.analysis.results has these as helpers
    #    (per_trial, by_round, summary, gap_to_random), and the paper's question with
    #    intervals over seeds: contrast, outcome, claims; its load() adds short names for the
    #    most used cfg.* columns (init for cfg.init.name, ...: engine.schema.records.SHORT_NAMES).


if __name__ == "__main__":
    main()
