"""The recommender: user context from the signal stream, rule policy, tip history."""
