"""``python -m apmae``: the LightningCLI entry point (fit / validate / test / predict)."""

from apmae.cli import main

if __name__ == "__main__":
    main()
