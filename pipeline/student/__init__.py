"""Stage 3 (`stages/train_student.py` runs `train.run`): models, loss, data, training, evaluation,
checkpoints and metrics."""
