"""The methods, grouped by what they need from the model."""
