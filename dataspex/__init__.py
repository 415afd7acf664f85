"""dataspex: find the pairs of training examples that jointly help or hurt a fine-tuned model."""

__version__ = "0.1.0"
