def duplicates(*a):
    raise NotImplementedError


def top_duplicates(*a):
    raise NotImplementedError
