r"""Each registered claim in mathematical notation, for the documentation's theory pages.

`CLAIMS` maps every id of `theory_checks.REGISTRY` (checks and claims not tested) to one or two LaTeX
formulas stating the claim as the paper states it, or as it is reconstructed or derived where the
paper's equations were stripped from its text (the check's provenance tags say which).  The docs build
converts them to MathML (``latex2mathml``, at build time: no script, no CDN) and fails when an id of the
registry has no entry here or an entry names no registered id, so the pages cannot drift from the
registry.  The notation follows the papers: θ parameters, g = ∇f(θ) (G for a matrix parameter), P the
preconditioner, H the Hessian, ε or η a learning rate.

The formulas use only what latex2mathml 3.77 converts: no ``aligned`` environment, no
``\operatorname*``, no ``\arg`` (write ``\operatorname{argmin}``).
"""

from __future__ import annotations

__all__ = ["CLAIMS"]

CLAIMS: dict[str, tuple[str, ...]] = {
    # ------------------------------------------------------------------------------------------ FOP
    "FOP-1": (
        r"\theta_{t+1} = \theta_t - \varepsilon P\nabla f(\theta_t),\ "
        r"\varepsilon = \frac{\lambda_{\min}}{L\lambda_{\max}^2}:\quad f(\theta_{t+1}) - f^\star \le "
        r"\left(1 - \frac{\mu\lambda_{\min}^2}{L\lambda_{\max}^2}\right)\left(f(\theta_t) - f^\star\right)",
        r"0 < \varepsilon < \frac{2}{L\lambda_{\max}}:\quad f(\theta_{t+1}) - f^\star \le "
        r"\left(1 - 2\mu\varepsilon\lambda_{\min}"
        r"\left(1 - \tfrac{1}{2}L\varepsilon\lambda_{\max}\right)\right)"
        r"\left(f(\theta_t) - f^\star\right)",
    ),
    "FOP-2": (
        r"\tilde P_t = \nu_t\frac{P_t}{\lVert P_t\rVert_2},\quad "
        r"\nu_t = \delta(t)\lVert P_t\rVert_2 + \left(1 - \delta(t)\right)\kappa,\quad "
        r"\theta_{t+1} = \theta_t - \tilde P_t\nabla f(\theta_t)",
        r"\kappa < \frac{1}{L},\ t\,\delta(t) \to 0\ \Rightarrow\ \theta_t \to \theta^\star",
    ),
    "FOP-3": (
        r"\theta_t = \theta_{t-1} - \varepsilon G_{t-1}M^\top M\ \Rightarrow\ "
        r"\nabla_M J(\theta_t) = -\varepsilon M\left(G_{t-1}^\top G_t + G_t^\top G_{t-1}\right)",
    ),
    "FOP-4": (
        r"P = M^\top M \succeq 0",
        r"\det M_t = \det M_{t-1}"
        r"\left(1 + \rho\varepsilon(a + b)\right)\left(1 + \rho\varepsilon(a - b)\right),"
        r"\quad a = g_t^\top g_{t-1},\ b = \lVert g_t\rVert\lVert g_{t-1}\rVert",
    ),
    "FOP-5": (
        r"P = I + M^\top M,\ M \in \mathbb{R}^{r\times n}:\quad \operatorname{rank}(P - I) \le r,\ "
        r"\lambda_{\min}(P) \ge 1",
        r"\lVert P_0 - I\rVert_2 = \lVert M_0\rVert_2^2,\quad "
        r"\mathbb{E}\lVert M_0\rVert_2 \le \sigma\left(\sqrt{r} + \sqrt{n}\right)",
    ),
    "FOP-6": (
        r"P = \sqrt{n}\,\frac{M^\top M}{\lVert M^\top M\rVert_F},\quad \lVert P\rVert_F = \sqrt{n}",
        r"M_0 \mapsto cM_0\ (c \ne 0):\quad \theta_1, \theta_2, \ldots\ \text{unchanged}",
    ),
    "FOP-7": (
        r"v_t = \mu v_{t-1} + \varepsilon G_{t-1}M^\top M,\quad \theta_t = \theta_{t-1} - v_t",
        r"\nabla_M J(\theta_t)\ \text{with}\ v_{t-1}\ \text{held constant}",
    ),
    "FOP-8": (
        r"M_0 = I\ \Rightarrow\ \theta_1^{\mathrm{FOP}} = \theta_1^{\mathrm{SGD}}",
        r"P_0 = I + M_0^\top M_0:\quad \theta_1^{\mathrm{FOP}} - \theta_1^{\mathrm{SGD}} = "
        r"-\eta\,G M_0^\top M_0 = O(\sigma^2)",
    ),
    "FOP-9": (
        r"\cos\angle(Pg, g) = \frac{g^\top Pg}{\lVert Pg\rVert\lVert g\rVert} \ge "
        r"\frac{2\sqrt{\kappa}}{1 + \kappa} > 0,\quad \kappa = \operatorname{cond}(P)",
    ),
    "FOP-THM1": (
        r"f\ \text{convex},\ L\text{-smooth},\ \lVert\nabla f\rVert < K,\ \kappa < \frac{1}{L},\ "
        r"t\,\delta(t) \to 0\ \Rightarrow\ \theta_t \to \theta^\star",
    ),
    # ----------------------------------------------------------------------------------------- PSGD
    "PSGD-1": (
        r"c(P) = \operatorname{tr}(PA) + \operatorname{tr}(P^{-1}B),\quad "
        r"A = \mathbb{E}[\delta\hat g\,\delta\hat g^\top],\ B = \mathbb{E}[\delta\theta\,\delta\theta^\top]",
        r"PAP = B\ \iff\ P = A^{-1/2}\left(A^{1/2}BA^{1/2}\right)^{1/2}A^{-1/2};\quad "
        r"B = I,\ \delta\hat g = H\delta\theta:\ P = \lvert H\rvert^{-1}",
    ),
    "PSGD-2": (
        r"H^{-1}\mathbb{E}[\delta\hat g\,\delta\hat g^\top]H^{-1} \succeq "
        r"\mathbb{E}[\delta\theta\,\delta\theta^\top]",
        r"\lvert\lambda(PH)\rvert \le 1,\quad B = I:\ P = (H^2 + \Sigma)^{-1/2} \preceq \lvert H\rvert^{-1}",
    ),
    "PSGD-3": (
        r"p = \operatorname{argmin}_{p > 0}\ p\left(h^2 + s^2\right) + \frac{1}{p} = "
        r"\frac{1}{\sqrt{h^2 + s^2}},"
        r"\quad \lvert ph\rvert \le 1",
    ),
    "PSGD-4": (
        r"\frac{\partial}{\partial\theta}\left(\frac{\partial\hat f}{\partial\theta}\right)^\top v = \hat Hv",
    ),
    "PSGD-5": (
        r"c(P) = \operatorname{tr}\left\{P\left(\mathbb{E}[\hat g\hat g^\top] + \lambda^2I\right) + "
        r"P^{-1}\right\}"
        r",\quad P^\star = \left(\mathbb{E}[\hat g\hat g^\top] + \lambda^2I\right)^{-1/2}",
        r"\mathbb{E}[\hat g\hat g^\top] = \frac{F}{B} + \frac{B - 1}{B}gg^\top",
    ),
    "PSGD-6": (
        r"c(P) = \operatorname{tr}(PA) + \operatorname{tr}(P^{-1}),\ A = U\operatorname{diag}(a)U^\top:\quad "
        r"\nabla c(P) = 0\ \iff\ P = U\operatorname{diag}\left(\pm a^{-1/2}\right)U^\top",
    ),
    "PSGD-7": (
        r"\left.\frac{d}{dt}\,c\left((I + tE)Q\right)\right|_{t=0} = \langle R, E\rangle,\quad "
        r"R = 2\Pi\left(aa^\top - bb^\top\right),\ a = Qh,\ b = Q^{-\top}v",
    ),
    "PSGD-8": (
        r"Q' = \left(I - \frac{\mu_0}{\lVert R\rVert_{\max}}R\right)Q",
        r"1 - \mu_0 \le \frac{q'_{ii}}{q_{ii}} \le 1 + \mu_0,\quad "
        r"\frac{\lvert\det Q'\rvert}{\lvert\det Q\rvert} \ge (1 - \mu_0)^n",
    ),
    "PSGD-9": (
        r"P = Q^\top Q \to \lvert H\rvert^{-1},\quad \lvert\lambda(PH)\rvert \to 1",
        r"\hat H = H + E:\quad P \to \left(H^2 + \mathbb{E}[E^2]\right)^{-1/2}",
    ),
    "PSGD-10": (
        r"Q = Q_1\otimes Q_2,\ H = H_1\otimes H_2:\quad P = Q^\top Q \to \lvert H\rvert^{-1}",
    ),
    "PSGD-11": (
        r"\begin{pmatrix}A_1 & C_1\\ 0 & B_1\end{pmatrix}\begin{pmatrix}A_2 & C_2\\ 0 & B_2\end{pmatrix} = "
        r"\begin{pmatrix}A_1A_2 & A_1C_2 + C_1B_2\\ 0 & B_1B_2\end{pmatrix},\quad "
        r"\begin{pmatrix}A & C\\ 0 & B\end{pmatrix}^{-1} = "
        r"\begin{pmatrix}A^{-1} & -A^{-1}CB^{-1}\\ 0 & B^{-1}\end{pmatrix}",
        r"(A\otimes B)^{-1} = A^{-1}\otimes B^{-1},\quad \det(XY) = \det X\det Y",
    ),
    "PSGD-12": (
        r"P\operatorname{vec}(G) = \operatorname{vec}\left(Q_1^\top Q_1GQ_2^\top Q_2\right)",
        r"\Theta' = Q_1^{-\top}\Theta Q_2^{-1},\ x' = Q_2x:\quad \Theta_k = Q_1^\top\Theta'_kQ_2",
    ),
    "PSGD-13": (
        r"P_{\mathrm{Fisher}} = \operatorname{diag}"
        r"\left(\frac{1}{\sqrt{\mathbb{E}[\hat g\odot\hat g] + \lambda^2}}\right)",
        r"P_{\mathrm{Newton}} = \operatorname{diag}"
        r"\left(\sqrt{\mathbb{E}[v\odot v]\oslash\mathbb{E}[Hv\odot Hv]}\right) = "
        r"\operatorname{diag}\left(\frac{1}{\lVert H_{i,:}\rVert_2}\right)",
    ),
    "PSGD-14": (
        r"Q = Q_D\otimes\operatorname{diag}(q):\quad g_i = 0\ \Rightarrow\ \Delta\theta_i = 0,\quad "
        r"\Delta\theta_i \propto q_i^2\,Q_D^\top Q_Dg_i",
    ),
    "PSGD-15": (
        r"\theta' - \theta = -\frac{\mu P\hat g}{\max\left(1, \lVert P\hat g\rVert/\Omega\right)},\quad "
        r"\lVert\theta' - \theta\rVert \le \mu\Omega",
    ),
    "PSGD-16": (
        r"\mathbb{E}[gg^\top] = A\otimes B\ \Rightarrow\ P \to A^{-1/2}\otimes B^{-1/2},\quad "
        r"P^2 = (A\otimes B)^{-1}",
    ),
    "PSGD-SCALEINV": (r"\theta' = D\theta\ \Rightarrow\ P' = DPD^\top",),
    # ----------------------------------------------------------------------------------------- LODO
    "LODO-1": (
        r"G(\theta) = \alpha_0\tilde I^\top K(\theta)^\top K(\theta)\tilde I \succeq 0,\quad "
        r"K = B_NP_N\cdots B_1P_1,\quad G(\theta_0) = \alpha_0I",
        r"\tilde n = 2n + k - (2n \bmod k)",
    ),
    "LODO-2": (r"\operatorname{cost}(Gx) = 2N\tilde nk = O(\tilde nkN)",),
    "LODO-3": (
        r"A_t = H^{1/2}G_tH^{1/2} - I,\quad b_t = H^{1/2}(x_t - s_t)",
        r"A_{t+1} = A_t - \alpha H\left(A_tb_t + H^{1/2}n_{t+1}\right)b_t^\top H,\quad "
        r"b_{t+1} = -A_tb_t - H^{1/2}n_{t+1}",
    ),
    "LODO-4": (
        r"A_t \to 0\ \left(G_t \to H^{-1}\right),\quad "
        r"\mathbb{E}\,\ell_t \to \tfrac{1}{2}\sigma^2\operatorname{tr}(H)",
    ),
    "LODO-5": (
        r"(\sigma, \alpha) \sim (1, \alpha\sigma^2),\quad (H, \alpha, G_0) \sim (cH, \alpha/c^3, G_0/c)",
    ),
    "LODO-6": (
        r"\Sigma = A\Sigma A^\top + \sigma^2H,\quad \mathbb{E}[\Delta A] = -\alpha HA\Sigma H",
        r"\frac{d}{d\tau}\lVert A\rVert_F^2 = -2\alpha\sigma^2\lVert H^{1/2}AH\rVert_F^2 < 0",
    ),
    "LODO-7": (
        r"D(c) = \lVert A_{\lfloor c/\alpha\rfloor} - \hat A_{\lfloor c/\alpha\rfloor}\rVert_2 = O(c^2),"
        r"\quad "
        r"\frac{D}{c} \to 0\ \text{as}\ \alpha \to 0",
    ),
    "LODO-8": (
        r"G \succ 0,\ H = H^\top:\quad \#\{\lambda(GH) < 0\} = \#\{\lambda(H) < 0\},\quad "
        r"\lambda(GH) \in \mathbb{R}",
    ),
    "LODO-9": (
        r"D\ \text{diagonal},\ D \succeq 0:\quad \exists\,\theta:\ G(\theta) = D",
        r"k = 2:\ \text{the switch networks of depth}\ N\ \text{reach all}\ n!\ \text{permutations}",
    ),
    "LODO-10": (
        r"\min_{W_1, W_2}\lVert I - H^{1/2}W_2W_1H^{1/2}\rVert_F^2 = 0\ \text{at every local minimum}"
        r"\ \left(W_2W_1 = H^{-1}\right)",
    ),
    "LODO-11": (
        r"\bar\ell_{\mathrm{Newton}} = \tfrac{1}{2}\sigma^2\operatorname{tr}(H),\quad "
        r"\bar\ell_{\mathrm{SGD}} = \sum_i\frac{\sigma^2}{2\eta(2 - \eta\lambda_i)}",
    ),
    "LODO-THM4.2": (
        r"\Pr\left[\exists\,\theta:\ G(\theta)\ \text{represents the target}\right] \ge f,\quad "
        r"f \approx 1 - Ce^{-cN/\cdots}",
    ),
    # ------------------------------------------------------------------------------------------ APO
    "APO-1": (
        r"\operatorname{argmin}_{\Delta}\ g^\top\Delta + \tfrac{1}{2}\lambda_F\Delta^\top G\Delta + "
        r"\tfrac{1}{2}\lambda_W\lVert\Delta\rVert^2 = -\left(\lambda_FG + \lambda_WI\right)^{-1}g",
    ),
    "APO-2": (
        r"\text{GD}\ -\frac{g}{\lambda_W},\quad \text{Newton}\ -H^{-1}g,\quad "
        r"\text{damped Newton}\ -(H + \lambda_WI)^{-1}g",
        r"\text{NG}\ -(\lambda_FF + \lambda_WI)^{-1}g,\quad "
        r"\text{GGN}\ -(\lambda_FG + \lambda_WI)^{-1}g,\quad "
        r"\nabla^2\mathrm{FSD}(\theta) = \mathbb{E}\left[J_f^\top\nabla^2\rho\,J_f\right]",
    ),
    "APO-3": (
        r"\hat Q(P) = \mathbb{E}_B\left[J_B - g_B^\top Pg_B + "
        r"\tfrac{1}{2}(Pg_B)^\top(\lambda_FG + \lambda_WI)Pg_B\right]",
        r"P^\star = \left(\lambda_FG + \lambda_WI\right)^{-1},\quad \nabla_P\hat Q = n_b(KPS - S),\ "
        r"K = \lambda_FG + \lambda_WI,\ S = \mathbb{E}[gg^\top]",
    ),
    "APO-4": (
        r"\operatorname{rank}S < d:\quad \operatorname{argmin}_P\hat Q = \{P:\ KPS = S\} \ni K^{-1}",
    ),
    "APO-5": (
        r"J_B = \tfrac{1}{2}(\theta - c_B)^\top H(\theta - c_B):\quad "
        r"P^\star = \left(H + \lambda_FG + \lambda_WI\right)^{-1}",
        r"\eta^\star = \frac{\mathbb{E}\lVert g\rVert^2}{\mathbb{E}[g^\top Hg] + "
        r"\lambda_W\mathbb{E}\lVert g\rVert^2 + \lambda_F\mathbb{E}[g^\top Gg]}",
    ),
    "APO-6": (
        r"\hat P = \left(\lambda_F\bar A\otimes\bar G + \lambda_WI\right)^{-1},\quad "
        r"S_{ij}^2 = \frac{1}{\lambda_F\lambda_i(\bar G)\lambda_j(\bar A) + \lambda_W}",
        r"\lambda_W = 0:\quad \hat P = \lambda_F^{-1}\,\bar A^{-1}\otimes\bar G^{-1}\ \text{(K-FAC)}",
    ),
    "APO-7": (
        r"\hat P = (A\otimes B)\operatorname{diag}(\operatorname{vec}S)^2(A\otimes B)^\top \succeq 0",
        r"\hat P\operatorname{vec}(G) = "
        r"\operatorname{vec}\left(B\left[(B^\top GA)\odot S\odot S\right]A^\top\right)",
    ),
    "APO-8": (
        r"u = \theta - Pg:\quad \frac{\partial Q}{\partial P} = "
        r"-\left[\nabla J_B(u) + \lambda_F\nabla\mathrm{FSD}(u) + \lambda_W(u - \theta)\right]g^\top",
        r"\frac{\partial Q}{\partial\eta} = "
        r"-\left[\nabla J_B(u) + \lambda_F\nabla\mathrm{FSD}(u)\right]^\top g + "
        r"\lambda_W\eta\lVert g\rVert^2",
    ),
    "APO-9": (
        r"\eta^\star_{\mathrm{same}} = \frac{\mathbb{E}\lVert g\rVert^2}{D},\quad "
        r"\eta^\star_{\mathrm{diff}} = \frac{\lVert\nabla J\rVert^2}{D},\quad "
        r"D = (1 + \lambda_F)\mathbb{E}[g^\top Hg] + \lambda_W\mathbb{E}\lVert g\rVert^2",
    ),
    "APO-10": (
        r"\mathbb{E}\left[\mathrm{FSD}_B\right] = "
        r"\tfrac{1}{2}\eta^2\left[\sigma^6(d + 2)(d + 4)\lVert\delta\rVert^2 "
        r"+ s^2\sigma^4d(d + 2)\right]",
        r"\mathbb{E}\left[\mathrm{FSD}_{B'}\right] = \tfrac{1}{2}\eta^2\sigma^2\left[\sigma^4(d + 2)"
        r"\lVert\delta\rVert^2 + s^2\sigma^2d\right]",
    ),
    "APO-11": (
        r"g^\top\hat Pg \ge 0,\quad J\left(\theta - \alpha\hat Pg\right) \le J(\theta) - "
        r"\left(1 - \tfrac{c}{2}\right)\alpha\,g^\top\hat Pg,\quad "
        r"\alpha = \frac{c}{L\lambda_{\max}(\hat P)},\ "
        r"0 < c < 2",
    ),
    "APO-ROBUST": (
        r"J\left(\theta_T;\ \eta_0, K\right)\ \text{insensitive to the initial learning rate}\ \eta_0\ "
        r"\text{and the meta-update interval}\ K",
    ),
}
"""id → the claim as one or two LaTeX formulas (each rendered as a display formula)."""
