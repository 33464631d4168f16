"""Running models: prediction and evaluation (training joins later)."""
