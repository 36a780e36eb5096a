"""python -m fastgan train (placeholder until the training job lands)."""


def add_arguments(parser):
    parser.add_argument("--dataset", default="digits")


def main(args):
    raise SystemExit("train is not implemented yet")
