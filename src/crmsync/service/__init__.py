"""The long-running service: shared context, worker loop, scheduler."""
