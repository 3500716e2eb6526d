"""The services a host offers plugins: broker, events, messages, state, config, secrets, micros."""
