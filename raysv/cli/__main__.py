from raysv.cli import main

raise SystemExit(main())
