"""dataspex: find the pairs of training examples that jointly help or hurt a fine-tuned model."""

__version__ = "0.1.0"

__all__ = ["Run", "load_run"]


def __getattr__(name):  # lazy: `import dataspex` stays light for the CLI
    if name in ("load_run", "Run"):
        from dataspex import api

        return getattr(api, name)
    raise AttributeError(f"module 'dataspex' has no attribute {name!r}")
