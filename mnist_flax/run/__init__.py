"""What a run needs besides the maths: sharding, checkpoints, locks, atomic files, records, config checks."""
