"""The event bus, subscriptions, publishers, durable topics and the plugin's face of them."""
