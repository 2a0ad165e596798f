"""`python -m app.cli_main`: the console script without relying on the installed entry point."""

from app.cli import main

if __name__ == "__main__":
    main()
