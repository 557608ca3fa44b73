"""Choose a transformation sequence for DTI K-means with GridSearchCV.

Runs a 3-fold ``GridSearchCV`` with ``n_jobs=2`` over four transformation
sequences on scikit-learn's handwritten digits (1,797 images of 8 x 8
pixels), scoring every candidate three ways on the held-out folds:

* ``score``: the estimator's default score, minus the mean squared distance
  to the best aligned prototype.  It rewards flexibility: a longer sequence
  can fit every sample at least as well (its extra transformations can stay
  the identity), though after a short training the transformations switched
  on last may not have caught up;
* ``ari`` and ``nmi``: agreement of the predicted clusters with the digit
  labels (adjusted Rand index, normalised mutual information), which is what
  a transformation sequence is for.

The search refits the sequence with the best ARI.  Prints the results table
and the wall time (about a minute or two on two cores with the defaults).

Run from the repository root::

    python examples/grid_search_digits.py

On a machine whose cores are busy with other work, prefix the command with
``OMP_NUM_THREADS=1``: the workers already train with one thread each, and
torch's default of one thread per core makes the final refit in the main
process several times slower when those cores are contended.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from dti_sklearn import DTIKMeans

SEQUENCES = [["aff"], ["aff", "mor"], ["aff", "tps"], ["aff", "mor", "tps"]]


def default_score(estimator, X, y=None) -> float:
    """The estimator's own ``score`` (for multi-metric scoring)."""
    return estimator.score(X)


def main(argv: list[str] | None = None) -> GridSearchCV:
    """Run the search, print the table and the wall time, return the fitted search."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=10, help="epochs per fit")
    parser.add_argument("--n-jobs", type=int, default=2, help="parallel fits")
    parser.add_argument("--cv", type=int, default=3, help="folds")
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args(argv)

    digits = load_digits()
    X, y = digits.images / 16.0, digits.target
    print(f"load_digits: {X.shape[0]} images of {X.shape[1]} x {X.shape[2]} pixels")

    search = GridSearchCV(
        DTIKMeans(n_clusters=10, max_iter=args.max_iter, random_state=args.random_state),
        {"transforms": SEQUENCES},
        scoring={
            "score": default_score,
            "ari": "adjusted_rand_score",
            "nmi": "normalized_mutual_info_score",
        },
        refit="ari",
        cv=StratifiedKFold(args.cv, shuffle=True, random_state=args.random_state),
        n_jobs=args.n_jobs,
    )
    start = time.perf_counter()
    search.fit(X, y)
    wall = time.perf_counter() - start

    results = search.cv_results_
    print(
        f"\n{args.cv}-fold GridSearchCV, n_jobs={args.n_jobs}, max_iter={args.max_iter}; "
        "held-out fold means (std)"
    )
    header = f"{'transforms':<24}{'score':>16}{'ARI':>16}{'NMI':>16}{'fit (s)':>9}"
    print(header)
    print("-" * len(header))
    for i, params in enumerate(results["params"]):
        cells = [
            f"{results[f'mean_test_{m}'][i]:>9.3f} ({results[f'std_test_{m}'][i]:.3f})"
            for m in ("score", "ari", "nmi")
        ]
        name = "+".join(params["transforms"])
        print(f"{name:<24}{cells[0]:>16}{cells[1]:>16}{cells[2]:>16}"
              f"{results['mean_fit_time'][i]:>9.1f}")
    by_score = results["params"][int(np.argmax(results["mean_test_score"]))]["transforms"]
    print(f"\nbest by the default score: {'+'.join(by_score)}")
    print(f"best by ARI (refitted):    {'+'.join(search.best_params_['transforms'])}")
    fits = len(results["params"]) * search.n_splits_
    print(f"{fits} fits of {results['mean_fit_time'].mean():.1f} s on average, "
          f"scoring {results['mean_score_time'].mean():.1f} s, refit {search.refit_time_:.1f} s")
    print(f"wall time: {wall:.1f} s")
    return search


if __name__ == "__main__":
    main()
