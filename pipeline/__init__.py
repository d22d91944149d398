"""The distillation pipeline's library: config, data, shards, teacher cache, students, training."""
