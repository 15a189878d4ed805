"""``python -m glide`` (and ``torchrun ... -m glide train ...``): the ``glide`` console script."""

from glide.cli import main

if __name__ == "__main__":
    main()
