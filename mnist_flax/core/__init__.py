"""The pure core: the model, the train state, the train and eval steps, and scoring a split."""
