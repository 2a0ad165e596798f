"""Staff and teams: who works here, in which team, with which roles, and who manages each team."""
