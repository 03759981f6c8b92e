def main():
    raise SystemExit("r1mega CLI not built yet")
