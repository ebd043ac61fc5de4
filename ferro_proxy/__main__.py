from ferro_proxy.cli import main

raise SystemExit(main())
