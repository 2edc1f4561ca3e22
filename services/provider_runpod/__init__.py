"""The RunPod provider: a pod whose start command fetches the job bundle and runs the trainer."""
