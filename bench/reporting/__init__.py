"""Stage 4, run artifacts -> leaderboard: tables and statistics (leaderboard.py), figures (plots.py)."""
