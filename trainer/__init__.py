"""E-SPL trainer: prompt population with TrueSkill, LLM mutation and crossover, RL on weights."""
