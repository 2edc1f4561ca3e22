"""The Lambda Cloud provider: a plain instance reached over SSH (paramiko) and SFTP."""
