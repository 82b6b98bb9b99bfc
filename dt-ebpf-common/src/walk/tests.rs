// Walker unit tests.
