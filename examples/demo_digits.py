"""Cluster scikit-learn's handwritten digits with DTI K-means.

Prints cluster accuracy (ACC) and NMI of :class:`dti_sklearn.DTIKMeans` next
to scikit-learn's ``KMeans`` on the raw pixels, and writes a PNG of the
learned prototypes and of prototypes aligned to a few samples.

Run from the repository root::

    python examples/demo_digits.py
"""

from __future__ import annotations

import argparse
import time

from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from dti_sklearn import DTIKMeans
from dti_sklearn.datasets import load_digits_images
from dti_sklearn.metrics import cluster_accuracy


def main(argv: list[str] | None = None) -> dict:
    """Run the demo and return the figures it prints."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="dti_digits.png", help="PNG to write")
    parser.add_argument("--max-iter", type=int, default=None, help="epochs")
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args(argv)

    images, labels = load_digits_images()
    print(f"load_digits: {len(images)} images of {images.shape[1]} x {images.shape[2]} pixels")

    start = time.perf_counter()
    kmeans = KMeans(n_clusters=10, n_init=10, random_state=args.random_state)
    kmeans_labels = kmeans.fit_predict(images.reshape(len(images), -1))
    kmeans_time = time.perf_counter() - start

    params = {} if args.max_iter is None else {"max_iter": args.max_iter}
    start = time.perf_counter()
    dti = DTIKMeans(n_clusters=10, random_state=args.random_state, verbose=1, **params)
    dti_labels = dti.fit_predict(images)
    dti_time = time.perf_counter() - start

    rows = {
        "KMeans (raw pixels)": (kmeans_labels, kmeans_time),
        "DTIKMeans": (dti_labels, dti_time),
    }
    results = {}
    print(f"\n{'model':<22}{'ACC':>8}{'NMI':>8}{'time (s)':>10}")
    for name, (pred, seconds) in rows.items():
        acc = cluster_accuracy(labels, pred)
        nmi = normalized_mutual_info_score(labels, pred)
        results[name] = {"acc": acc, "nmi": nmi, "seconds": seconds}
        print(f"{name:<22}{100 * acc:>8.1f}{100 * nmi:>8.1f}{seconds:>10.1f}")

    try:
        from dti_sklearn.plotting import plot_aligned_prototypes, plot_prototypes, save_figure
    except ImportError:
        print("\nmatplotlib is missing: no figure written (pip install 'dti_sklearn[plot]').")
        return results
    save_figure(plot_prototypes(dti.prototypes_, title="DTIKMeans prototypes"), args.output)
    aligned_path = args.output.replace(".png", "_aligned.png")
    fig = plot_aligned_prototypes(
        images[:8], dti.get_aligned_prototypes(images[:8]), labels=dti_labels[:8]
    )
    save_figure(fig, aligned_path)
    print(f"\nwrote {args.output} and {aligned_path}")
    return results


if __name__ == "__main__":
    main()
