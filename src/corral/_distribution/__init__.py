"""Distribution: signing and trust, the registry client, the resolver and the installer."""
