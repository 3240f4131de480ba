from django.core.management.base import BaseCommand

from tasks.reads import sweep_expired_leases


class Command(BaseCommand):
    help = "Return reads whose lease expired to the queue (Celery beat runs this every minute in production)."

    def handle(self, *args, **options):
        self.stdout.write(f"{sweep_expired_leases()} expired read(s) returned to the queue")
