"""Running models: prediction, evaluation and training."""
