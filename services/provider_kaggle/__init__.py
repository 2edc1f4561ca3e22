"""The Kaggle provider: a private script kernel, pushed with the real ``kaggle`` client, that runs the job."""
