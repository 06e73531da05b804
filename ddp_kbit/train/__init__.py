"""Training on each rank: ignite engines and handlers, checkpoints, models, collectives."""
