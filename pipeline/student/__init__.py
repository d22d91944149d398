"""Stage 3 (`stages/train_student.py` runs `train.run`): loss, data, training, evaluation, export and
metrics; the models are in pipeline/models, the teacher's rows in pipeline/cache."""
