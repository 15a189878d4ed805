"""``python -m glide``: the same as the ``glide`` console script."""

from glide.cli import main

if __name__ == "__main__":
    main()
