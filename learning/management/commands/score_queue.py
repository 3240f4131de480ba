from learning.management.commands._learning_command import LearningJobCommand
from learning.models import LearningJob


class Command(LearningJobCommand):
    help = "Score the project's open tasks with the current model and re-prioritise the queue (runs here)."
    kind = LearningJob.Kind.SCORE
