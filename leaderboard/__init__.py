"""Leaderboard: eval suites, SQLite store, ratings, views."""
