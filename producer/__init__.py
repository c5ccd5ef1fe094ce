"""The producer side: plan and submit jobs (``curator-submit``), watch them (``curator-jobs``)."""

from producer.submit import SubmittedJob, plan_job, submit_job
from producer.wait import wait_for_job

__all__ = ["SubmittedJob", "plan_job", "submit_job", "wait_for_job"]
