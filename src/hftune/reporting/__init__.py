"""What people read from a finished run: model cards, plots and the leaderboard, all built from its `RunRecord`."""
