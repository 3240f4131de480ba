from learning.management.commands._learning_command import LearningJobCommand
from learning.models import LearningJob


class Command(LearningJobCommand):
    help = "Train a model on the project's consensus labels and evaluate it on the gold set (runs here)."
    kind = LearningJob.Kind.TRAIN
