"""The Hugging Face Spaces provider: a private Docker Space whose fixed start command fetches the job bundle."""
