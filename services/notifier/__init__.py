"""The notifier: tells users what happens to their jobs, by signed webhooks and by email."""
