"""Isolated code execution: Docker backend, warm pool, image build."""
