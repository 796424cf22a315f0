"""``python -m entropo`` (and ``torchrun --nproc-per-node N -m entropo train RECIPE``): the command line."""

from entropo.cli import main

if __name__ == "__main__":
    main()
