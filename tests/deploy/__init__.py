"""Deployment tests: docker/, the many-host cluster, RabbitMQ, autoscaling."""
