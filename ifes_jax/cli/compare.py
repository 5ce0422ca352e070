"""Compare fusion methods pair by pair against a reference method:

python scripts/compare.py --results runs/eval/results.json [more results.json ...]
    --against "ours (base)" [--metrics AG,EN,GLD,SF,VIFF] [--out comparison.md]

Prints (and writes to --out) each method's means and its paired change against the reference
(ifes_jax/compare.py): percent of the reference's mean, in standard errors of the per-pair
differences, and on how many pairs it is higher.
"""
import argparse

from ifes_jax.cli import fail


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", nargs="+", required=True, help="evaluate's results.json files")
    p.add_argument("--against", required=True, help="the reference method's label")
    p.add_argument("--metrics", help="comma separated (default: every metric scored)")
    p.add_argument("--out", help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    from ifes_jax import compare
    from ifes_jax.errors import InputError
    metrics = args.metrics.split(",") if args.metrics else None
    try:
        per_pair, means = compare.load_results(args.results)
        text = compare.means_table(means, metrics) + "\n" + compare.comparison_table(
            per_pair, args.against, metrics)
    except InputError as exc:
        fail(f"error: {exc}", argv is None)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
