"""Customer Voice Live resources: name, region (C3), upstream endpoint, owner tenant."""
